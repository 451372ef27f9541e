"""Screenshot of the impasto napari plugin after a finished run, for the docs.

Opens napari (under Xvfb when there is no display), docks the plugin from its manifest, loads the
sample data, runs a real job on a local server (started by the plugin, stopped at the end) and
saves the whole window:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_napari.py
    .venv/bin/python scripts/screenshot_napari.py --size 256 --iterations 60 --out docs/images/napari.png

Needs the Debian packages listed in docs/napari.md (xvfb and the X/GL libraries Qt loads).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _ensure_display() -> subprocess.Popen[bytes] | None:
    """Start a private Xvfb when no X display is set; napari draws with OpenGL on X."""
    if os.environ.get("DISPLAY"):
        return None
    if not shutil.which("Xvfb"):
        sys.exit("no X display and no Xvfb: apt-get install xvfb, or run under xvfb-run")
    read, write = os.pipe()
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        process.kill()
        sys.exit("Xvfb did not start")
    os.environ["DISPLAY"] = f":{number}"
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/napari.png")
    parser.add_argument("--size", type=int, default=192, help="long side of the result")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--preview-every", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")
    args = parser.parse_args()

    xvfb = _ensure_display()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        viewer = napari.Viewer(title="napari + impasto")
        viewer.window._qt_window.resize(1500, 950)
        viewer.open_sample("impasto", "content_and_style")
        _, widget = viewer.window.add_plugin_dock_widget("impasto", "impasto")
        widget.mode.setCurrentIndex(widget.mode.findData("local"))
        widget.content.setCurrentText("astronaut")
        widget.style_rows[0].layer.setCurrentText("brush strokes")
        widget.set_options(size=args.size, iterations=args.iterations, num_scales=2, seed=1)
        widget.preview_interval.setValue(args.preview_every)
        widget.run()
        started = time.monotonic()
        app = QApplication.instance()
        while widget.run_state is not None:
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - started > args.timeout:
                widget.cancel()
                print("the run took too long; cancelled", file=sys.stderr)
        outcome = widget.last_outcome
        if outcome is None or outcome.status != "done":
            print(f"the run did not finish: {outcome}", file=sys.stderr)
            return 1
        # Show the result over the content, with its layer selected in the list.
        result = viewer.layers[-1]
        viewer.layers.selection.active = result
        viewer.reset_view()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=False)
        seconds = result.metadata["impasto"]["elapsed_seconds"]
        print(f"saved {out} ({result.name}: {args.size} px, {args.iterations} it, {seconds:.1f} s)")
        viewer.close()  # stops the local server
        return 0
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(5)


if __name__ == "__main__":
    raise SystemExit(main())
