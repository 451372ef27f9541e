#!/usr/bin/env node
// Stylize an image with an impasto server, from Node.js.
//
// The client loads the project's own .proto at run time (no generated code), sends the
// image files as they are (the server decodes PNG, JPEG and TIFF; a file of another format is
// refused before anything is sent), prints one line per streamed event, and writes the result
// as PNG.
//
//   node stylize.js content.png style.png [style2.png ...] -o out.png \
//        [--server 127.0.0.1:50051] [--size 256] [--iterations 100] [--token T]
//
// Run `node stylize.js --help` for every flag.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = process.env.IMPASTO_PROTO_ROOT || path.resolve(__dirname, '../../../proto');
const PROTO_FILE = 'impasto/v1/style_transfer.proto';
// Matches the server's default: a 4096x4096 RGB float32 image plus the request around it.
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024;
// The server's port when an address names none (impasto-server's default), not gRPC's 443.
const DEFAULT_PORT = 50051;

const USAGE = `usage: node stylize.js CONTENT STYLE [STYLE ...] -o OUT.png [options]

  CONTENT, STYLE     image files (PNG, JPEG or TIFF); several styles are blended
  -o, --output FILE  where to write the result (PNG)
  --server TARGET    host[:port] (port 50051 when left out), several IP[:port] separated by
                     commas, or dns:///name:port (several servers are balanced round-robin)
                     [default 127.0.0.1:50051]
  --size N           long side of the result in pixels
  --iterations N     optimisation iterations
  --preset NAME      default | paper
  --style-weights W  comma-separated blend weights, one per style
  --seed N           seed for reproducible results
  --preview N        ask for a preview image every N iterations (its size is printed)
  --token TOKEN      bearer token (or the IMPASTO_TOKEN environment variable)
  --tls              use TLS (system roots unless --ca is given)
  --ca FILE          PEM file of the CA that signed the server's certificate
  --cert FILE        PEM client certificate (mutual TLS), with --key FILE
  --timeout SECONDS  give up (and stop the job on the server) after this long
  --info             print the server's description (GetServerInfo) as JSON and exit
  -h, --help         this text
`;

class UsageError extends Error {}
// The user pressed Ctrl-C and the call was cancelled.
class Interrupted extends Error {}

function parseArgs(argv) {
  const args = {
    inputs: [],
    output: null,
    server: '127.0.0.1:50051',
    size: null,
    iterations: null,
    preset: null,
    styleWeights: null,
    seed: null,
    preview: 0,
    token: process.env.IMPASTO_TOKEN || null,
    tls: false,
    ca: null,
    cert: null,
    key: null,
    timeout: null,
    info: false,
  };
  const valueOf = (i, flag) => {
    if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
    return argv[i + 1];
  };
  const positiveInt = (text, flag) => {
    // a uint32 field: a larger number would be sent as another
    if (!/^\d+$/.test(text) || Number(text) < 1 || Number(text) > 0xffffffff) {
      throw new UsageError(
        `${flag} must be a positive integer below 2^32, not ${JSON.stringify(text)}`,
      );
    }
    return Number(text);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    switch (arg) {
      case '-h':
      case '--help':
        args.help = true;
        break;
      case '-o':
      case '--output':
        args.output = valueOf(i, arg);
        i++;
        break;
      case '--server':
        args.server = valueOf(i, arg);
        i++;
        break;
      case '--size':
        args.size = positiveInt(valueOf(i, arg), arg);
        i++;
        break;
      case '--iterations':
        args.iterations = positiveInt(valueOf(i, arg), arg);
        i++;
        break;
      case '--preset': {
        const name = valueOf(i, arg).toLowerCase();
        if (!['default', 'paper'].includes(name)) {
          throw new UsageError(`--preset must be default or paper, not ${JSON.stringify(name)}`);
        }
        args.preset = name;
        i++;
        break;
      }
      case '--style-weights':
        args.styleWeights = valueOf(i, arg)
          .split(',')
          .filter((w) => w.trim()) // "0.7,0.3," as the Python client reads it
          .map((w) => {
            const value = Number(w.trim());
            if (!Number.isFinite(value) || value < 0) {
              throw new UsageError(`--style-weights: ${JSON.stringify(w)} is not a weight >= 0`);
            }
            return value;
          });
        i++;
        break;
      case '--seed': {
        const text = valueOf(i, arg);
        if (!/^\d+$/.test(text) || BigInt(text) >= 2n ** 64n) {
          throw new UsageError(`--seed must be an integer in [0, 2^64), not ${text}`);
        }
        args.seed = text; // uint64: kept as a string so no precision is lost
        i++;
        break;
      }
      case '--preview':
        args.preview = positiveInt(valueOf(i, arg), arg);
        i++;
        break;
      case '--token':
        args.token = valueOf(i, arg);
        i++;
        break;
      case '--tls':
        args.tls = true;
        break;
      case '--ca':
        args.ca = valueOf(i, arg);
        args.tls = true;
        i++;
        break;
      case '--cert':
        args.cert = valueOf(i, arg);
        args.tls = true;
        i++;
        break;
      case '--key':
        args.key = valueOf(i, arg);
        i++;
        break;
      case '--timeout': {
        const seconds = Number(valueOf(i, arg));
        if (!Number.isFinite(seconds) || seconds <= 0) {
          throw new UsageError('--timeout must be a number of seconds > 0');
        }
        args.timeout = seconds;
        i++;
        break;
      }
      case '--info':
        args.info = true;
        break;
      default:
        if (arg.startsWith('-') && arg !== '-') throw new UsageError(`unknown option ${arg}`);
        args.inputs.push(arg);
    }
  }
  if (args.help || args.info) return args;
  if (args.inputs.length < 2) throw new UsageError('give a content image and at least one style');
  if (!args.output) throw new UsageError('give the output file with -o OUT.png');
  if (args.styleWeights && args.styleWeights.length !== args.inputs.length - 1) {
    throw new UsageError(
      `--style-weights has ${args.styleWeights.length} weights for ${args.inputs.length - 1} styles`,
    );
  }
  if (Boolean(args.cert) !== Boolean(args.key)) {
    throw new UsageError('--cert and --key go together');
  }
  return args;
}

function loadService() {
  const definition = protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names exactly as in the .proto (snake_case)
    enums: String, // enum values by name, e.g. 'IMAGE_FORMAT_PNG'
    longs: String, // uint64 (seed, max_pixels) without precision loss
    defaults: false,
    oneofs: true, // sets `event` to the name of the field that is present
  });
  return grpc.loadPackageDefinition(definition).impasto.v1;
}

// google.rpc.Status and the three error details the server sends, so a refused request
// can name its offending fields and a job its reason. Declared here because they are not part
// of our .proto.
const statusTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
            RetryInfo: { fields: { retry_delay: { type: 'google.protobuf.Duration', id: 1 } } },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
          },
        },
      },
    },
  },
});

function describeError(error) {
  const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === error.code) || error.code;
  const lines = [`error: ${codeName}: ${error.details || error.message}`];
  const raw = error.metadata && error.metadata.get('grpc-status-details-bin')[0];
  if (raw) {
    try {
      const status = statusTypes.lookupType('google.rpc.Status').decode(raw);
      for (const detail of status.details) {
        const name = detail.type_url.split('/').pop();
        if (name === 'google.rpc.BadRequest') {
          const bad = statusTypes.lookupType('google.rpc.BadRequest').decode(detail.value);
          for (const v of bad.field_violations) {
            const text = `${v.field}: ${v.description}`;
            if (!lines[0].includes(text)) lines.push(`  ${text}`);
          }
        } else if (name === 'google.rpc.RetryInfo') {
          const info = statusTypes.lookupType('google.rpc.RetryInfo').decode(detail.value);
          const d = info.retry_delay || {};
          lines.push(`  retry after ${Number(d.seconds || 0) + (d.nanos || 0) / 1e9} s`);
        } else if (name === 'google.rpc.ErrorInfo') {
          // Why the server ended or refused the job (docs/api.md lists the reasons); for
          // TOO_LARGE its metadata holds the largest size that fits this server's memory.
          const info = statusTypes.lookupType('google.rpc.ErrorInfo').decode(detail.value);
          const meta = Object.entries(info.metadata || {}).sort();
          const extra = meta.length ? ` (${meta.map(([k, v]) => `${k}=${v}`).join(', ')})` : '';
          lines.push(`  reason ${info.reason}${extra}`);
        }
      }
    } catch (e) {
      lines.push(`  (unreadable error details: ${e.message})`);
    }
  }
  return lines.join('\n');
}

// Why a file could not be read, in words.
function readFailure(e) {
  const words = {
    ENOENT: 'no such file',
    EACCES: 'permission denied',
    EISDIR: 'it is a folder, not a file',
  };
  return words[e.code] ? `${words[e.code]} (${e.code})` : e.code || e.message;
}

function readFlagFile(file, flag) {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`${flag} ${file}: cannot read it: ${readFailure(e)}`);
  }
}

// The CA bundle of --ca: gRPC takes one without a certificate in it and fails each handshake
// later, so it is checked here.
function readCa(file) {
  const pem = readFlagFile(file, '--ca');
  const blocks = pem
    .toString('latin1')
    .match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) throw new UsageError(`--ca ${file}: no PEM certificate in it`);
  for (const block of blocks) {
    try {
      new crypto.X509Certificate(block);
    } catch (e) {
      throw new UsageError(`--ca ${file}: not a valid PEM certificate: ${e.message}`);
    }
  }
  return pem;
}

// The channel's credentials; every file they need is read (and checked) before connecting.
function channelCredentials(args) {
  if (!args.tls) return grpc.credentials.createInsecure();
  const ca = args.ca ? readCa(args.ca) : null;
  const key = args.key ? readFlagFile(args.key, '--key') : null;
  const cert = args.cert ? readFlagFile(args.cert, '--cert') : null;
  try {
    return grpc.credentials.createSsl(ca, key, cert);
  } catch (e) {
    // a key or certificate that is not PEM, or a key that is not the certificate's
    throw new UsageError(`--cert ${args.cert} --key ${args.key}: ${e.message}`);
  }
}

function makeClient(service, args) {
  const target = toTarget(args.server);
  let credentials = channelCredentials(args);
  if (args.token) {
    if (!args.tls && !isLoopback(target)) {
      console.error('warning: sending a bearer token without TLS');
    }
    const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
      const metadata = new grpc.Metadata();
      metadata.add('authorization', `Bearer ${args.token}`);
      callback(null, metadata);
    });
    // grpc-js refuses call credentials on an insecure channel, so over plaintext the token
    // travels as plain call metadata instead (see callMetadata).
    if (args.tls) credentials = grpc.credentials.combineChannelCredentials(credentials, bearer);
  }
  const serviceConfig = {
    loadBalancingConfig: [{ round_robin: {} }],
    methodConfig: [
      {
        name: [{ service: 'impasto.v1.StyleTransferService' }],
        // gRPC retries only until the first response arrives, so a started job never runs twice.
        retryPolicy: {
          maxAttempts: 4,
          initialBackoff: '0.2s',
          maxBackoff: '2s',
          backoffMultiplier: 2,
          retryableStatusCodes: ['UNAVAILABLE'],
        },
      },
    ],
  };
  return new service.StyleTransferService(target, credentials, {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    'grpc.service_config': JSON.stringify(serviceConfig),
    'grpc.enable_retries': 1,
  });
}

function isLoopback(target) {
  return /^(localhost:|127\.|\[::1\]:|ipv4:127\.|ipv6:\[::1\]:)/.test(target);
}

// A target with a scheme: it goes to gRPC as it is.
const URI_SCHEME = /^(dns|ipv4|ipv6|unix|unix-abstract|vsock):/;

// host -> host:50051, [v6] and a bare v6 -> [v6]:50051 (gRPC would dial 443, or take a bare
// one's last group for a port); host:port and [v6]:port are left as they are.
function withPort(address) {
  const text = address.trim();
  if (!text) throw new UsageError('--server: no address given');
  if (!text.includes(':') || (text.startsWith('[') && text.endsWith(']'))) {
    return `${text}:${DEFAULT_PORT}`;
  }
  if (net.isIPv6(text)) return `[${text}]:${DEFAULT_PORT}`;
  const colon = text.lastIndexOf(':');
  const host = text.slice(0, colon);
  const port = text.slice(colon + 1);
  // gRPC would fail each connection with a port above 65535, well after the start
  const plain = !host.includes(':') || host.startsWith('[');
  if (plain && /^\d+$/.test(port) && !(Number(port) >= 1 && Number(port) <= 65535)) {
    throw new UsageError(`--server ${text}: the port must lie in [1, 65535]`);
  }
  return text;
}

function toTarget(server) {
  // A target with a scheme (dns:///name:port, ipv4:a:p,b:p, unix:...) goes to gRPC as it is;
  // gRPC resolves a dns:/// name itself, every address of it (a headless Kubernetes Service).
  if (URI_SCHEME.test(server.trim())) return server.trim();
  const parts = server.split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0) throw new UsageError('--server: no address given');
  if (parts.length === 1) return withPort(parts[0]);
  for (let i = 0; i < parts.length; i++) parts[i] = withPort(parts[i]);
  // Several plain address:port become one ipv4:/ipv6: list that round_robin spreads jobs over.
  if (parts.every((p) => /^\d+\.\d+\.\d+\.\d+:\d+$/.test(p))) return `ipv4:${parts.join(',')}`;
  if (parts.every((p) => /^\[[0-9a-fA-F:.]+\]:\d+$/.test(p))) return `ipv6:${parts.join(',')}`;
  throw new UsageError(
    'several --server addresses must all be IP addresses, IPv4[:port] or [IPv6][:port]; for ' +
      'host names use one dns:///name:port target',
  );
}

function callMetadata(args) {
  const metadata = new grpc.Metadata();
  if (args.token && !args.tls) metadata.add('authorization', `Bearer ${args.token}`);
  return metadata;
}

// The formats the server decodes, by their first bytes.
const SERVER_FORMATS = [
  ['PNG', Buffer.from('89504e470d0a1a0a', 'hex')],
  ['JPEG', Buffer.from('ffd8ff', 'hex')],
  ['TIFF', Buffer.from('II*\0', 'latin1')],
  ['TIFF', Buffer.from('MM\0*', 'latin1')],
  ['TIFF', Buffer.from('II+\0', 'latin1')], // BigTIFF
  ['TIFF', Buffer.from('MM\0+', 'latin1')],
];

// Formats the server does not read, named so that the message can say what the file is.
function otherFormat(bytes) {
  const head = bytes.subarray(0, 16).toString('latin1');
  if (/^GIF8[79]a/.test(head)) return 'a GIF image';
  // "BM", then the size of the header that follows the file's own 14 bytes
  const bmpHeaders = [12, 40, 52, 56, 64, 108, 124];
  if (head.startsWith('BM') && bytes.length >= 18 && bmpHeaders.includes(bytes.readUInt32LE(14))) {
    return 'a BMP image';
  }
  if (head.startsWith('RIFF') && head.slice(8, 12) === 'WEBP') return 'a WebP image';
  if (head.slice(4, 8) === 'ftyp') {
    const brand = head.slice(8, 12);
    if (brand.startsWith('avi')) return 'an AVIF image';
    if (['heic', 'heix', 'hevc', 'heim', 'heis', 'mif1', 'msf1'].includes(brand)) {
      return 'a HEIF (HEIC) image';
    }
  }
  if (head.startsWith('\x93NUMPY')) return 'a numpy array';
  return null;
}

// An input image's bytes, sent as they are; a file the server could not decode (another
// format, not an image at all) is refused here, before anything is sent, with its name.
function readImage(file, what) {
  let bytes;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new UsageError(`cannot read the ${what} image ${file}: ${readFailure(e)}`);
  }
  if (bytes.length === 0) throw new UsageError(`${what} ${file}: the file is empty`);
  if (SERVER_FORMATS.some(([, magic]) => bytes.subarray(0, magic.length).equals(magic))) {
    return bytes;
  }
  const found = otherFormat(bytes);
  throw new UsageError(
    `${what} ${file}: ${found ? `${found}, ` : ''}not a PNG, JPEG or TIFF file, the formats ` +
      'the server reads; convert it to PNG first',
  );
}

function pngSize(bytes) {
  // Width and height sit at fixed offsets of the IHDR chunk, right after the signature.
  if (bytes.length < 24 || bytes.readUInt32BE(12) !== 0x49484452) return null;
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

function formatLosses(losses) {
  return ['total', 'content', 'style', 'tv']
    .filter((k) => losses && k in losses)
    .map((k) => `${k}=${Number(losses[k]).toPrecision(4)}`)
    .join(' ');
}

function buildRequest(args) {
  const [contentFile, ...styleFiles] = args.inputs;
  const options = {};
  if (args.preset) options.preset = `PRESET_${args.preset.toUpperCase()}`;
  if (args.size !== null) options.size = args.size;
  if (args.iterations !== null) options.iterations = args.iterations;
  if (args.seed !== null) options.seed = args.seed;
  return {
    content: { encoded: readImage(contentFile, 'content') },
    styles: styleFiles.map((file, i) => ({
      image: { encoded: readImage(file, 'style') },
      weight: args.styleWeights ? args.styleWeights[i] : 0,
    })),
    options,
    output_format: 'IMAGE_FORMAT_PNG',
    preview_interval: args.preview,
  };
}

function deadlineOf(args) {
  if (!args.timeout) return Infinity;
  const deadline = new Date(Date.now() + args.timeout * 1000);
  // past the last date JavaScript has (some 270000 years): no deadline, not an invalid one
  return Number.isNaN(deadline.getTime()) ? Infinity : deadline;
}

function info(client, args) {
  return new Promise((resolve, reject) => {
    client.GetServerInfo({}, callMetadata(args), { deadline: deadlineOf(args) }, (err, reply) => {
      if (err) return reject(err);
      // proto-loader marks each proto3 `optional` field with a synthetic `_name` oneof key.
      const replacer = (key, value) => (key.startsWith('_') ? undefined : value);
      console.log(JSON.stringify(reply, replacer, 2));
      resolve(0);
    });
  });
}

// Before the job: an output the result could not be written to is refused now, not after a
// long run, and so is one of the job's own input files, which the result would replace.
// Missing folders are made.
function prepareOutput(file, inputs) {
  let stat = null;
  try {
    stat = fs.statSync(file, { bigint: true });
  } catch {
    // absent: written at the end
  }
  if (stat && stat.isDirectory()) {
    throw new UsageError(`cannot write ${file}: it is a folder; give a file name`);
  }
  inputs.forEach((input, i) => {
    let other = null;
    try {
      other = fs.statSync(input, { bigint: true });
    } catch {
      return;
    }
    if (stat && other.dev === stat.dev && other.ino === stat.ino) {
      const what = i === 0 ? 'the content image' : `style image ${i} (styles[${i - 1}])`;
      throw new UsageError(
        `cannot write ${file}: it is ${what}, which the result would replace; ` +
          'give another file name',
      );
    }
  });
  try {
    makeFolders(path.dirname(path.resolve(file)));
    // Opened to append, which changes nothing, and closed: what access() would allow (root
    // may write anywhere) may still be refused by the file system (/proc, a read-only mount).
    fs.closeSync(fs.openSync(file, 'a'));
    if (!stat) fs.unlinkSync(file);
  } catch (e) {
    throw new UsageError(`cannot write ${file}: ${e.message}`);
  }
}

// The missing folders above a file, outermost first, one at a time: Node 20's recursive
// mkdirSync never returns where a folder cannot be made in an existing one (/proc/x/y).
function makeFolders(dir) {
  const missing = [];
  for (let d = dir; !fs.existsSync(d) && path.dirname(d) !== d; d = path.dirname(d)) {
    missing.unshift(d);
  }
  for (const d of missing) fs.mkdirSync(d);
}

// Should writing the result still fail (a full disk), it goes to the temporary folder instead.
function writeResult(file, png) {
  try {
    fs.writeFileSync(file, png);
    return null;
  } catch (e) {
    const spare = path.join(os.tmpdir(), `${path.parse(file).name}-${process.pid}.png`);
    try {
      fs.writeFileSync(spare, png);
    } catch {
      return `cannot write ${file}: ${e.code || e.message}; the result is lost`;
    }
    return `cannot write ${file} (${e.code || e.message}); the result is saved as ${spare} instead`;
  }
}

function stylize(client, request, args) {
  return new Promise((resolve, reject) => {
    const call = client.Stylize(request, callMetadata(args), { deadline: deadlineOf(args) });
    let result = null;
    let interrupted = false;
    // Ctrl-C cancels the call; the server stops the job within one iteration.
    const onSigint = () => {
      console.error('cancelling...');
      interrupted = true;
      call.cancel();
    };
    process.once('SIGINT', onSigint);
    call.on('data', (message) => {
      switch (message.event) {
        case 'queued': {
          const q = message.queued;
          console.log(`queued: job ${q.job_id}, position ${q.position} of ${q.queue_length}`);
          break;
        }
        case 'started': {
          const s = message.started;
          console.log(
            `started: job ${s.job_id} on ${s.device}, ${s.total_iterations} iterations, ` +
              `${s.width}x${s.height}, waited ${Number(s.queued_seconds || 0).toFixed(2)} s`,
          );
          break;
        }
        case 'progress': {
          const p = message.progress;
          let line =
            `progress: ${p.iteration}/${p.total_iterations} ${formatLosses(p.losses)} ` +
            `elapsed ${Number(p.elapsed_seconds || 0).toFixed(2)} s ` +
            `eta ${Number(p.eta_seconds || 0).toFixed(2)} s`;
          if (p.scale_count > 1) line += ` scale ${(p.scale_index || 0) + 1}/${p.scale_count}`;
          if (p.preview && p.preview.encoded) {
            const size = pngSize(p.preview.encoded);
            if (size) line += ` preview ${size.width}x${size.height}`;
          }
          console.log(line);
          break;
        }
        case 'result':
          result = message.result;
          break;
        default:
          console.error(`warning: ignoring an unknown event ${JSON.stringify(message.event)}`);
      }
    });
    call.on('error', (err) => {
      process.removeListener('SIGINT', onSigint);
      reject(interrupted ? new Interrupted() : err);
    });
    call.on('end', () => {
      process.removeListener('SIGINT', onSigint);
      if (!result) return reject(new Error('the stream ended without a result'));
      const png = result.image && result.image.encoded;
      if (!png) return reject(new Error('the server did not send the result as PNG'));
      const size = pngSize(png);
      const dims = size ? `${size.width}x${size.height}` : 'unknown size';
      console.log(
        `result: job ${result.job_id}, ${result.iterations} iterations in ` +
          `${Number(result.elapsed_seconds || 0).toFixed(2)} s, ${formatLosses(result.losses)}`,
      );
      const failed = writeResult(args.output, png);
      if (failed) return reject(new Error(failed));
      console.log(`wrote ${args.output} (${dims})`);
      resolve(0);
    });
  });
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message} (node stylize.js --help lists the options)`);
      return 2;
    }
    throw e;
  }
  if (args.help) {
    console.log(USAGE);
    return 0;
  }
  let client;
  try {
    // Everything the command line names is read and checked before connecting: the images,
    // the output's place, then the address and the TLS files.
    let request = null;
    if (!args.info) {
      request = buildRequest(args);
      prepareOutput(args.output, args.inputs);
    }
    client = makeClient(loadService(), args);
    return await (args.info ? info(client, args) : stylize(client, request, args));
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}`);
      return 2;
    }
    if (e instanceof Interrupted) {
      console.error('cancelled');
      return 130; // 128 + SIGINT, as a shell reports a command that Ctrl-C stopped
    }
    if (typeof e.code === 'number') {
      console.error(describeError(e));
      return 1;
    }
    console.error(`error: ${e.message}`);
    return 1;
  } finally {
    if (client) client.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e) => {
      console.error(`error: ${e.message}`);
      process.exitCode = 1;
    },
  );
}

module.exports = {
  parseArgs,
  buildRequest,
  readImage,
  toTarget,
  withPort,
  UsageError,
  DEFAULT_PORT,
};
