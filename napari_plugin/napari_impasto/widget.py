"""The dock widget: pick layers, choose options, run on a server, keep the result as a layer.

The GUI thread only reads layers, builds a ``RunPlan`` and shows what the worker yields; all
network work (starting the local server, connecting, streaming the job) runs in a
``thread_worker``, so the viewer never freezes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from impasto.client import Progress, Queued, ServerInfo, Started
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_impasto import layers as layer_tools
from napari_impasto import results
from napari_impasto import settings as settings_store
from napari_impasto.connection import Connection, ServerChoice
from napari_impasto.results import PREVIEW_LAYER, ActiveRun
from napari_impasto.worker import (
    MAX_REGIONS_SHOWN,
    Connected,
    JobEvent,
    Outcome,
    PlaneDone,
    PlaneTask,
    Regions,
    RunControl,
    RunPlan,
    check_server,
    default_style,
    preset_controls,
    run_plan,
)

if TYPE_CHECKING:
    import napari

BLEND = "blend of all styles"
#: Masks up to this many pixels are counted on the GUI thread (a few ms); larger ones in the
#: background.
SYNC_COUNT_PIXELS = 1 << 20
#: ServerInfo.token values that mean a job would be refused: (status line, notification).
TOKEN_PROBLEMS = {
    "missing": ("token needed", "needs a bearer token: enter it in Token (or set IMPASTO_TOKEN)"),
    "invalid": ("token not valid", "does not accept this token: check it in Token"),
    "expired": ("token expired", "says this token has expired: ask for a new one"),
}

#: Used until a server answers GetServerInfo (the engine's defaults, without importing it).
FALLBACK_DEFAULTS: dict[str, Any] = {
    "preset": "default",
    "size": 512,
    "iterations": 300,
    "content_weight": 1.0,
    "style_weight": 1e3,
    "tv_weight": 0.0,
    "init": "content",
    "color_preservation": "none",
    "num_scales": 4,
    "seed": None,
}
FALLBACK_ALLOWED: dict[str, Any] = {
    "presets": ["default", "paper"],
    "inits": ["content", "noise", "image"],
    "color_preservations": ["none", "luminance", "color_statistics"],
    "size": (16, 8192),
    "iterations": (1, 100_000),
    "num_scales": (1, 8),
}


class _StyleRow(QWidget):
    """One style: a layer and its blend weight."""

    def __init__(self, on_remove: Any) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.layer = QComboBox()
        self.layer.setToolTip("an Image layer whose look the result takes on")
        self.weight = QDoubleSpinBox()
        self.weight.setRange(0.0, 1000.0)
        self.weight.setDecimals(2)
        self.weight.setSingleStep(0.1)
        self.weight.setValue(1.0)
        self.weight.setToolTip("blend weight of this style (relative to the others)")
        self.remove = QPushButton("−")
        self.remove.setFixedWidth(28)
        self.remove.setToolTip("remove this style")
        self.remove.clicked.connect(lambda: on_remove(self))
        layout.addWidget(self.layer, 1)
        layout.addWidget(self.weight)
        layout.addWidget(self.remove)


def _float_edit(tooltip: str) -> QLineEdit:
    # A line edit rather than a spin box: weights span many decades (1e-6 .. 1e6).
    edit = QLineEdit()
    edit.setToolTip(tooltip)
    return edit


class ImpastoWidget(QWidget):
    """Stylize a content layer with one or more style layers on an impasto server."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.settings = settings_store.load()
        self.connection = Connection()
        self.server_info: ServerInfo | None = None
        self.run_state: ActiveRun | None = None
        self.last_outcome: Outcome | None = None
        self.previews_shown = 0  # previews shown since the widget opened
        self._check_worker: Any = None  # the newest check, while it runs
        self._checks = 0  # checks asked for: only the newest one's answer is shown
        self._count_worker: Any = None  # counting a large mask's labels
        # Options the user chose (now or in an earlier session): server defaults leave them be,
        # and only these are saved. Choosing a preset takes back the options it sets.
        self._user_options: set[str] = set(self.settings.options)
        # Options set before a preset was chosen while the server had not answered yet (so
        # which options the preset sets was not known): the preset's values replace those it
        # sets once the server answers.
        self._yield_to_preset: set[str] = set()
        self._applying = False
        self._layer_names: list[str] = []  # the layers' names at the last refresh
        self._viewer_events = False  # following the viewer's layers (attached below)
        # The chosen mask's labels, found once per mask and per edit of it (np.unique over a
        # large volume takes seconds: not again at every change of the layer list).
        self._mask_followed: Labels | None = None  # the mask whose paint and data we follow
        self._mask_edits = 0
        self._mask_labels: tuple[tuple[str, int], list[int]] | None = None  # (name, edits)
        # label -> style index (-1: the blend of all) for every label the regions table has
        # shown: the user's choices, and the defaults shown until the user chose. The table
        # is made from these, and a run sends them.
        self._region_style: dict[int, int] = {}
        self._table_labels: tuple[str, list[int]] | None = None  # (mask name, labels shown)
        self._build()
        self._regions_timer = QTimer(self)  # regions again once a stroke of painting ends
        self._regions_timer.setSingleShot(True)
        self._regions_timer.setInterval(300)
        self._regions_timer.timeout.connect(self._refresh_regions)
        self._apply_allowed(FALLBACK_ALLOWED)
        self._apply_defaults({**FALLBACK_DEFAULTS, **self.settings.options})
        self._track_user_edits()
        self._load_server_settings()
        self._refresh_layer_choices()
        self._docked = False  # in a panel now (or since the last removal)
        self._attach_viewer_events()
        # The cleanup must not need this Python object, which may be half gone by then.
        self.destroyed.connect(functools.partial(_release, self.connection, self._controls()))
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.connection.close)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        root = QVBoxLayout(self)

        server = QGroupBox("Server")
        form = QFormLayout(server)
        self.mode = QComboBox()
        self.mode.addItem("Local (on this machine)", "local")
        self.mode.addItem("Remote", "remote")
        self.mode.currentIndexChanged.connect(self._on_mode_changed)
        self.address = QLineEdit()
        self.address.setPlaceholderText("host:port")
        self.tls = QCheckBox("TLS")
        self.root_certificates = QLineEdit()
        self.root_certificates.setPlaceholderText("CA certificate (PEM); empty: system roots")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("bearer token (not saved; or set IMPASTO_TOKEN)")
        self.check_button = QPushButton("Check server")
        self.check_button.clicked.connect(self.check_server)
        self.server_status = QLabel("not connected")
        self.server_status.setWordWrap(True)
        form.addRow("Mode", self.mode)
        form.addRow("Address", self.address)
        form.addRow("", self.tls)
        form.addRow("CA file", self.root_certificates)
        form.addRow("Token", self.token)
        form.addRow(self.check_button, self.server_status)
        self.server_box = server
        root.addWidget(server)

        inputs = QGroupBox("Layers")
        form = QFormLayout(inputs)
        self.content = QComboBox()
        self.content.setToolTip("the Image layer to stylize")
        self.content.currentIndexChanged.connect(self._on_content_changed)
        self.style_rows_box = QVBoxLayout()
        self.style_rows: list[_StyleRow] = []
        self.add_style_button = QPushButton("+ style")
        self.add_style_button.clicked.connect(lambda: self.add_style_row())
        styles = QWidget()
        styles_layout = QVBoxLayout(styles)
        styles_layout.setContentsMargins(0, 0, 0, 0)
        styles_layout.addLayout(self.style_rows_box)
        styles_layout.addWidget(self.add_style_button)
        self.mask = QComboBox()
        self.mask.setToolTip("optional Labels layer: each label can take its own style")
        self.mask.currentIndexChanged.connect(self._refresh_regions)
        self.regions = QTableWidget(0, 2)
        self.regions.setHorizontalHeaderLabels(["label", "style"])
        self.regions.verticalHeader().setVisible(False)
        self.regions.horizontalHeader().setStretchLastSection(True)
        self.regions.setMaximumHeight(120)
        self.stack_mode = QComboBox()
        self.stack_mode.addItem("current slice", "slice")
        self.stack_mode.addItem("whole stack, slice by slice", "stack")
        self.apply_colormap = QCheckBox("grayscale through its colormap (result in colour)")
        form.addRow("Content", self.content)
        form.addRow("Styles", styles)
        form.addRow("Mask", self.mask)
        form.addRow("Regions", self.regions)
        form.addRow("nD", self.stack_mode)
        form.addRow("", self.apply_colormap)
        self.inputs_box = inputs
        root.addWidget(inputs)

        options = QGroupBox("Options")
        form = QFormLayout(options)
        self.preset = QComboBox()
        self.preset.currentIndexChanged.connect(self._on_preset_changed)
        self.size = QSpinBox()
        self.size.setToolTip("long side of the result in pixels")
        self.iterations = QSpinBox()
        self.content_weight = _float_edit("weight of the content loss (alpha)")
        self.style_weight = _float_edit("weight of the style loss (beta)")
        self.tv_weight = _float_edit(
            "weight of the total-variation smoothing: at the default content and style weights "
            "1e13 smooths visibly, 1e14 strongly"
        )
        self.init = QComboBox()
        self.init.currentIndexChanged.connect(self._on_init_changed)
        self.init_layer = QComboBox()
        self.init_layer.setToolTip("the Image layer the optimisation starts from")
        self.seed = QLineEdit()
        self.seed.setPlaceholderText("random")
        self.color_preservation = QComboBox()
        self.num_scales = QSpinBox()
        self.num_scales.setToolTip("coarse-to-fine stages (sqrt(2) apart)")
        self.preview_interval = QSpinBox()
        self.preview_interval.setRange(0, settings_store.PREVIEW_INTERVAL_MAX)
        self.preview_interval.setSpecialValueText("off")
        self.preview_interval.setToolTip("show a preview every N iterations")
        form.addRow("Preset", self.preset)
        form.addRow("Size", self.size)
        form.addRow("Iterations", self.iterations)
        form.addRow("Content weight", self.content_weight)
        form.addRow("Style weight", self.style_weight)
        form.addRow("TV weight", self.tv_weight)
        form.addRow("Init", self.init)
        form.addRow("Init layer", self.init_layer)
        form.addRow("Seed", self.seed)
        form.addRow("Colour", self.color_preservation)
        form.addRow("Scales", self.num_scales)
        form.addRow("Preview every", self.preview_interval)
        self.options_box = options
        root.addWidget(options)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        root.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(self.progress)
        root.addWidget(self.status)
        root.addStretch(1)
        self.add_style_row()

    def _controls(self) -> list[Any]:
        # A list the destroyed-callback can reach without this object: it is filled with the
        # active run's control while one runs.
        self._control_box: list[Any] = []
        return self._control_box

    # ------------------------------------------------------------------ layers

    def _viewer_handlers(self) -> list[tuple[Any, Any]]:
        """(event, handler) for what the widget follows: the layer list and each name."""
        events = self.viewer.layers.events
        return [
            (events.inserted, self._on_layer_inserted),
            (events.removed, self._on_layer_removed),
            (events.moved, self._on_layers_changed),
            *((layer.events.name, self._on_layer_renamed) for layer in self.viewer.layers),
        ]

    def _attach_viewer_events(self) -> None:
        if self._viewer_events:
            return
        self._viewer_events = True
        self._mask_edits += 1  # edits made while not followed
        for event, handler in self._viewer_handlers():
            event.connect(handler)
        self._refresh_layer_choices()

    def _detach_viewer_events(self) -> None:
        if not self._viewer_events:
            return
        self._viewer_events = False
        for event, handler in self._viewer_handlers():
            event.disconnect(handler)
        self._follow_mask(None)

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._on_layer_renamed)
        self._refresh_layer_choices()

    def _on_layer_removed(self, event: Any) -> None:
        event.value.events.name.disconnect(self._on_layer_renamed)
        if self._mask_followed is not None and self._mask_followed.name == event.value.name:
            self._follow_mask(None)  # another layer may take its name
        self._refresh_layer_choices()

    def _on_layer_renamed(self, event: Any = None) -> None:
        # The one name that went and the one that came (plugins see proxies of the layers,
        # so names, not identities); a choice of the renamed layer follows it.
        names = [layer.name for layer in self.viewer.layers]
        gone = [name for name in self._layer_names if name not in names]
        came = [name for name in names if name not in self._layer_names]
        renamed = (gone[0], came[0]) if len(gone) == len(came) == 1 else None
        self._refresh_layer_choices(renamed=renamed)

    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _on_layers_changed(self, event: Any = None) -> None:
        self._refresh_layer_choices()

    def _refresh_layer_choices(self, renamed: tuple[str, str] | None = None) -> None:
        self._layer_names = [layer.name for layer in self.viewer.layers]
        names = [layer.name for layer in self._image_layers() if layer.name != PREVIEW_LAYER]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        _fill(self.content, names, renamed=renamed)
        for row in self.style_rows:
            _fill(row.layer, names, renamed=renamed)
        _fill(self.init_layer, names, renamed=renamed)
        _fill(self.mask, ["(none)", *labels], renamed=renamed)
        self._on_content_changed()  # styles propose a layer other than the content
        self._refresh_regions()

    def _on_content_changed(self) -> None:
        content = self.content.currentText()
        for row in self.style_rows:
            if row.layer.currentText() == content:
                other = next(
                    (row.layer.itemText(i) for i in range(row.layer.count())
                     if row.layer.itemText(i) != content),
                    None,
                )  # fmt: skip
                if other is not None:
                    row.layer.setCurrentText(other)

    def add_style_row(self, layer: str | None = None, weight: float = 1.0) -> _StyleRow:
        row = _StyleRow(self._remove_style_row)
        names = [layer.name for layer in self._image_layers() if layer.name != PREVIEW_LAYER]
        _fill(row.layer, names)
        if layer is not None:
            row.layer.setCurrentText(layer)
        else:
            _fill(row.layer, names, prefer_not=self.content.currentText())
        row.weight.setValue(weight)
        row.layer.currentIndexChanged.connect(self._refresh_regions)
        self.style_rows.append(row)
        self.style_rows_box.addWidget(row)
        self._refresh_regions()
        return row

    def _remove_style_row(self, row: _StyleRow) -> None:
        if len(self.style_rows) <= 1:
            return  # a run needs at least one style
        removed = self.style_rows.index(row)
        # The regions keep their styles: those after the removed one move up a place, and the
        # removed one's regions take the blend.
        self._region_style = {
            label: index - (index > removed) if index != removed else -1
            for label, index in self._region_style.items()
        }
        self.style_rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self._refresh_regions()

    def _follow_mask(self, mask: Labels | None) -> None:
        """Follow the chosen mask's painting and data, which change its labels. (By name: a
        plugin sees a new proxy of a layer at each look.)"""
        followed = self._mask_followed
        if (mask is None and followed is None) or (
            mask is not None and followed is not None and mask.name == followed.name
        ):
            return
        for layer, connect in ((self._mask_followed, False), (mask, True)):
            if layer is not None:
                for emitter in (layer.events.paint, layer.events.data):
                    (emitter.connect if connect else emitter.disconnect)(self._on_mask_edited)
        self._mask_followed = mask
        self._mask_edits += 1

    def _on_mask_edited(self, event: Any = None) -> None:
        self._mask_edits += 1
        self._regions_timer.start()  # once the painting pauses

    def _labels_of(self, mask: Labels) -> list[int] | None:
        """The mask's labels as of its last edit; None while a large mask is being counted
        in the background (the table fills in when it is done)."""
        key = (mask.name, self._mask_edits)
        if self._mask_labels is not None and self._mask_labels[0] == key:
            return self._mask_labels[1]
        data = layer_tools.base_data(mask)
        if int(np.prod(getattr(data, "shape", ()))) <= SYNC_COUNT_PIXELS:
            self._mask_labels = (key, _labels_in(data))
            return self._mask_labels[1]
        if self._count_worker is None:
            worker = create_worker(_labels_in, data, _start_thread=False)
            worker.returned.connect(functools.partial(self._on_labels_counted, key))
            worker.finished.connect(self._on_count_finished)
            self._count_worker = worker
            worker.start()
        # else: the count under way ends in a refresh, which counts again for this edit
        return None

    def _on_labels_counted(self, key: tuple[str, int], labels: list[int]) -> None:
        if self._viewer_events:  # else the panel was closed meanwhile
            self._mask_labels = (key, labels)

    def _on_count_finished(self) -> None:
        self._count_worker = None
        if self._viewer_events:
            self._refresh_regions()

    def _refresh_regions(self, *_: Any) -> None:
        """The regions table again: a row per label of the chosen mask, with the style chosen
        for it before, else its default. While a large mask's labels are being counted, the
        table keeps the labels it shows (with the styles as they are now) until the count
        ends."""
        mask = self._layer(self.mask.currentText(), Labels)
        if self._viewer_events or mask is None:
            self._follow_mask(mask)
        labels: list[int] = []
        if mask is not None:
            counted = self._labels_of(mask)
            if counted is not None:
                labels = counted
            elif self._table_labels is not None and self._table_labels[0] == mask.name:
                labels = self._table_labels[1]
        self._table_labels = (mask.name, labels) if mask is not None else None
        styles = [row.layer.currentText() for row in self.style_rows]
        self.regions.setRowCount(0)
        for position, label in enumerate(labels[:MAX_REGIONS_SHOWN]):
            self.regions.insertRow(position)
            self.regions.setCellWidget(position, 0, QLabel(str(label)))
            choice = QComboBox()
            choice.addItem(BLEND, -1)
            for index, name in enumerate(styles):
                choice.addItem(f"{index + 1}: {name}", index)
            style = self._region_style.get(label, default_style(label, len(styles)))
            style = style if 0 <= style < len(styles) else -1
            self._region_style[label] = style
            choice.setCurrentIndex(style + 1)
            choice.currentIndexChanged.connect(functools.partial(self._on_region_chosen, label))
            self.regions.setCellWidget(position, 1, choice)

    def _on_region_chosen(self, label: int, position: int) -> None:
        if position >= 0:  # -1: the list was emptied
            self._region_style[label] = position - 1  # the blend first, then the styles

    def region_styles(self) -> dict[int, int]:
        """label -> style index, for the labels not left to the blend."""
        return {label: index for label, index in self._region_choices().items() if index >= 0}

    def _region_choices(self) -> dict[int, int]:
        """label -> style index, -1 for the blend: every row of the table."""
        choices: dict[int, int] = {}
        for row in range(self.regions.rowCount()):
            label_widget = self.regions.cellWidget(row, 0)
            choice = self.regions.cellWidget(row, 1)
            if label_widget is None or choice is None:
                continue
            index = choice.currentData()
            if index is not None:
                choices[int(label_widget.text())] = int(index)
        return choices

    def _layer(self, name: str, kind: type) -> Any:
        if name and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if isinstance(layer, kind):
                return layer
        return None

    # ------------------------------------------------------------------ server

    def _load_server_settings(self) -> None:
        s = self.settings
        self.mode.setCurrentIndex(max(0, self.mode.findData(s.mode)))
        self.address.setText(s.address)
        self.tls.setChecked(s.tls)
        self.root_certificates.setText(s.root_certificates)
        self.token.setText(settings_store.token_from_environment())
        self.preview_interval.setValue(s.preview_interval)
        self.stack_mode.setCurrentIndex(max(0, self.stack_mode.findData(s.stack_mode)))
        self.apply_colormap.setChecked(s.apply_colormap)
        self._on_mode_changed()

    def _on_mode_changed(self) -> None:
        remote = self.mode.currentData() == "remote"
        for widget in (self.address, self.tls, self.root_certificates, self.token):
            widget.setEnabled(remote)
        self.server_info = None
        self.server_status.setText(self._unchecked_text())
        if remote:
            # The local server (running, or still starting for a cancelled run or a check)
            # stops unless another panel uses it.
            self.connection.release_local()
        else:
            # One still starting for a cancelled run or a check is wanted again.
            self.connection.want_local(self.server_choice().local_args)

    def _unchecked_text(self) -> str:
        if self.mode.currentData() == "remote":
            return "not checked"
        return "starts on this machine at the first run"

    def server_choice(self) -> ServerChoice:
        return ServerChoice(
            mode=self.mode.currentData() or "local",
            address=self.address.text().strip(),
            tls=self.tls.isChecked(),
            root_certificates=self.root_certificates.text().strip(),
            token=self.token.text().strip(),
            local_args=tuple(getattr(self, "local_server_args", ())),
        )

    def check_server(self) -> None:
        """Ask the server for its health, device and queue (in the background). Each click
        starts a check of the server chosen now; an older check still under way (a local
        server starting, a remote one slow to answer) ends on its own, unseen."""
        self._save_settings()
        self.server_status.setText("checking…")
        self._checks += 1
        choice = self.server_choice()
        worker = create_worker(check_server, self.connection, choice, _start_thread=False)
        worker.returned.connect(functools.partial(self._on_checked, self._checks, choice))
        worker.finished.connect(functools.partial(self._on_check_finished, self._checks))
        self._check_worker = worker
        worker.start()

    def _on_check_finished(self, number: int) -> None:
        if number == self._checks:
            self._check_worker = None

    def _on_checked(
        self, number: int, choice: ServerChoice, answer: tuple[str, str, ServerInfo | None]
    ) -> None:
        if not self._viewer_events or number != self._checks:
            # the panel was closed meanwhile (which closed the connection), or a newer check
            # was asked for: its answer is the one to show
            return
        health, address, info = answer
        if health == "STALE" or self.server_choice().target != choice.target:
            # another server was chosen meanwhile: this answer is not about it
            if self.server_status.text() == "checking…":
                self.server_status.setText(self._unchecked_text())
            return
        if health == "ERROR":
            self.server_status.setText("unreachable")
            show_error(address)
            return
        if info is None:
            self.server_status.setText(f"{address}: {health}")
            return
        self._on_server_info(address, info, health)
        if info.token in TOKEN_PROBLEMS:
            show_warning(f"impasto: the server at {address} {TOKEN_PROBLEMS[info.token][1]}")

    def _on_server_info(self, address: str, info: ServerInfo, health: str = "SERVING") -> None:
        first = self.server_info is None
        self.server_info = info
        graphs = ", CUDA graphs" if info.cuda_graphs else ""
        graphs += ", torch.compile" if info.compiled_network else ""
        token = f" · {TOKEN_PROBLEMS[info.token][0]}" if info.token in TOKEN_PROBLEMS else ""
        self.server_status.setText(
            f"{health} at {address} · {info.device}, {info.precision}{graphs} · "
            f"weights {info.weights} · "
            f"{info.running_jobs} running, {info.queued_jobs} queued · v{info.version}{token}"
        )
        if first:
            if self._yield_to_preset:
                self._user_options -= self._yield_to_preset & preset_controls(info)
                self._yield_to_preset = set()
                self._save_settings()
            self._apply_allowed(info.allowed)
            defaults = {**FALLBACK_DEFAULTS, **info.defaults}
            if "preset" in self._user_options:  # chosen before the server answered
                defaults.update(info.presets.get(self.preset.currentText()) or {})
            self._apply_defaults({k: v for k, v in defaults.items() if k not in self._user_options})

    # ------------------------------------------------------------------ options

    def _apply_allowed(self, allowed: dict[str, Any]) -> None:
        for combo, key in (
            (self.preset, "presets"),
            (self.init, "inits"),
            (self.color_preservation, "color_preservations"),
        ):
            values = [v for v in allowed.get(key) or FALLBACK_ALLOWED[key] if v]
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(values)
            if current in values:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        for spin, key in (
            (self.size, "size"),
            (self.iterations, "iterations"),
            (self.num_scales, "num_scales"),
        ):
            low, high = allowed.get(key) or FALLBACK_ALLOWED[key]
            spin.setRange(int(low), int(min(high, 2**31 - 1)))
        self._on_init_changed()

    def _track_user_edits(self) -> None:
        def mark(name: str) -> Any:
            def user_set(*_: Any) -> None:
                if not self._applying:
                    self._user_options.add(name)
                    self._yield_to_preset.discard(name)

            return user_set

        for spin, name in (
            (self.size, "size"),
            (self.iterations, "iterations"),
            (self.num_scales, "num_scales"),
        ):
            spin.valueChanged.connect(mark(name))
        for edit, name in (
            (self.content_weight, "content_weight"),
            (self.style_weight, "style_weight"),
            (self.tv_weight, "tv_weight"),
            (self.seed, "seed"),
        ):
            edit.textEdited.connect(mark(name))  # textEdited: the user's typing only
        for combo, name in (
            (self.preset, "preset"),
            (self.init, "init"),
            (self.color_preservation, "color_preservation"),
        ):
            combo.activated.connect(mark(name))  # activated: the user's choice only
        self.preset.activated.connect(self._on_preset_chosen)

    def _apply_defaults(self, values: dict[str, Any]) -> None:
        if "preset" in values:
            self.preset.blockSignals(True)
            self.preset.setCurrentText(str(values["preset"]))
            self.preset.blockSignals(False)
        self._set_options(values)

    def _set_options(self, values: dict[str, Any]) -> None:
        self._applying = True
        try:
            self._set_option_controls(values)
        finally:
            self._applying = False

    def _set_option_controls(self, values: dict[str, Any]) -> None:
        setters: dict[str, Any] = {
            "size": lambda v: self.size.setValue(int(v)),
            "iterations": lambda v: self.iterations.setValue(int(v)),
            "content_weight": lambda v: self.content_weight.setText(f"{float(v):g}"),
            "style_weight": lambda v: self.style_weight.setText(f"{float(v):g}"),
            "tv_weight": lambda v: self.tv_weight.setText(f"{float(v):g}"),
            "init": lambda v: self.init.setCurrentText(str(v)),
            "color_preservation": lambda v: self.color_preservation.setCurrentText(str(v)),
            "num_scales": lambda v: self.num_scales.setValue(int(v)),
            "seed": lambda v: self.seed.setText("" if v is None else str(int(v))),
        }
        for name, set_value in setters.items():
            if name in values:
                # A value that is no number (a server's odd default) leaves the control be.
                with contextlib.suppress(TypeError, ValueError, OverflowError):
                    set_value(values[name])

    def _on_preset_changed(self) -> None:
        """The controls take the preset's values where it differs from another preset (the
        size, say, stays)."""
        info = self.server_info
        values = info.presets.get(self.preset.currentText()) if info is not None else None
        if info is not None and values:
            controls = preset_controls(info)
            self._set_options({k: v for k, v in values.items() if k in controls})

    def _on_preset_chosen(self, *_: Any) -> None:
        """The user chose a preset: the options it sets are the preset's again, not the user's
        (until the user sets them anew)."""
        if self.server_info is None:
            self._yield_to_preset = self._user_options - {"preset"}
        else:
            self._user_options -= preset_controls(self.server_info)
            self._yield_to_preset = set()

    def _on_init_changed(self) -> None:
        self.init_layer.setEnabled(self.init.currentText() == "image")

    def set_options(self, **values: Any) -> None:
        """Set option controls by option name (size=64, iterations=5, ...)."""
        if "preset" in values:
            self.preset.setCurrentText(str(values["preset"]))
            self._on_preset_chosen()
        self._set_options(values)
        self._user_options.update(values)
        self._yield_to_preset -= values.keys()

    def options(self) -> dict[str, Any]:
        """The options for the server, read from the controls (ValueError names a bad one)."""
        values: dict[str, Any] = {
            "preset": self.preset.currentText() or None,
            "size": self.size.value(),
            "iterations": self.iterations.value(),
            "init": self.init.currentText() or None,
            "color_preservation": self.color_preservation.currentText() or None,
            "num_scales": self.num_scales.value(),
        }
        for edit, name in (
            (self.content_weight, "content_weight"),
            (self.style_weight, "style_weight"),
            (self.tv_weight, "tv_weight"),
        ):
            text = edit.text().strip()
            try:
                number = float(text)
            except ValueError:
                raise ValueError(
                    f"{name.replace('_', ' ')} must be a number, not {text!r}"
                ) from None
            if not np.isfinite(number) or number < 0:
                raise ValueError(f"{name.replace('_', ' ')} must be a number >= 0")
            values[name] = number
        seed = self.seed.text().strip()
        if seed:
            # isdecimal, not isdigit: "²" is a digit that int() refuses
            if not seed.isdecimal():
                raise ValueError(f"seed must be a whole number >= 0 or empty, not {seed!r}")
            values["seed"] = int(seed)
        if self.server_info is None:
            # Until the server answers, the controls hold stand-ins for its defaults: only what
            # the user set goes, and the server fills in the rest (its defaults, or the values
            # of the preset chosen, which the stand-ins would override).
            values = {k: v for k, v in values.items() if k in self._user_options}
        return values

    # ------------------------------------------------------------------ running

    def _set_running(self, running: bool) -> None:
        for box in (self.server_box, self.inputs_box, self.options_box):
            box.setEnabled(not running)
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _save_settings(self, options: dict[str, Any] | None = None) -> None:
        """Save the server choice and the options the user set (``options``: their values now;
        the saved ones otherwise). Server defaults are not saved: they may change, and a preset
        chosen later must not meet them as the user's choices."""
        s = self.settings
        if options is None:
            options = s.options
        s.mode = self.mode.currentData() or "local"
        s.address = self.address.text().strip()
        s.tls = self.tls.isChecked()
        s.root_certificates = self.root_certificates.text().strip()
        s.options = {k: v for k, v in options.items() if v is not None and k in self._user_options}
        s.preview_interval = self.preview_interval.value()
        s.stack_mode = self.stack_mode.currentData() or "slice"
        s.apply_colormap = self.apply_colormap.isChecked()
        settings_store.save(s)

    def run(self) -> None:
        """Start a run from the current choices; problems become notifications."""
        if self.run_state is not None:
            return
        try:
            plan, state = self._plan()
        except (ValueError, layer_tools.LayerError) as error:
            show_error(f"impasto: {error}")
            return
        self._save_settings(plan.options)
        worker = create_worker(
            run_plan, plan, self.connection, self.server_choice(), state.control,
            _start_thread=False,
        )  # fmt: skip
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_finished)
        state.worker = worker
        self.run_state = state
        self._control_box[:] = [state.control]
        self.last_outcome = None
        self._set_running(True)
        self.progress.setValue(0)
        self.status.setText(
            "starting the local server…" if self.mode.currentData() == "local" else "connecting…"
        )
        worker.start()

    def _plan(self) -> tuple[RunPlan, ActiveRun]:
        content = self._layer(self.content.currentText(), Image)
        if content is None:
            raise ValueError("choose a content layer (an Image layer)")
        styles = []
        names = []
        weights = []
        style_layers = []
        for row in self.style_rows:
            layer = self._layer(row.layer.currentText(), Image)
            if layer is None:
                raise ValueError("choose a style layer for every style row")
            names.append(layer.name)
            style_layers.append(layer)
            rendering = layer_tools.rendering_of(layer, colormap=True)
            index = layer_tools.current_index(layer, self.viewer.dims.point)
            styles.append(layer_tools.picture_of(layer, index, rendering))
            weights.append(row.weight.value())
        if sum(weights) <= 0:
            raise ValueError("at least one style weight must be above 0")
        options = self.options()
        init_image = None
        if options.get("init") == "image":
            init = self._layer(self.init_layer.currentText(), Image)
            if init is None:
                raise ValueError("init 'image' needs an init layer")
            init_rendering = layer_tools.rendering_of(
                init, colormap=self.apply_colormap.isChecked()
            )
            init_index = layer_tools.current_index(init, self.viewer.dims.point)
            init_image = layer_tools.picture_of(init, init_index, init_rendering)
        rendering = layer_tools.rendering_of(content, colormap=self.apply_colormap.isChecked())
        stack = self.stack_mode.currentData() == "stack" and bool(
            layer_tools.leading_shape(content)
        )
        if stack:
            indices = list(layer_tools.all_indices(content))
        else:
            indices = [layer_tools.current_index(content, self.viewer.dims.point)]
        mask = self._layer(self.mask.currentText(), Labels)
        # The regions' styles as chosen (also while a large mask's labels are being counted);
        # the worker reads the labels of the planes it sends (edits made in code send no
        # event), and a label without a choice takes its default style.
        regions = dict(self._region_style) if mask is not None else {}
        shape = layer_tools.plane_shape(content)
        # The worker reads the planes one by one, from the arrays as they are now: napari
        # replaces layer.data on assignment, so these references keep what Run saw without
        # copying a whole stack. Not covered: changes made in place (layer.data[i] = ..., or a
        # lazy dask/zarr array whose store changes), which only a full copy would survive.
        data = layer_tools.base_data(content)
        read_content = functools.partial(
            layer_tools.picture_from, data, rendering=rendering, colormap=content.colormap
        )
        read_mask = (
            functools.partial(
                layer_tools.label_plane,
                layer_tools.base_data(mask),
                mask.name,
                shape=shape,
                shown=layer_tools.current_index(mask, self.viewer.dims.point),
            )
            if mask is not None
            else None
        )
        tasks = [
            PlaneTask(
                index,
                functools.partial(read_content, index),
                functools.partial(read_mask, index=index) if read_mask is not None else None,
            )
            for index in indices
        ]
        if mask is not None:
            tasks[0].mask()  # type: ignore[misc]  # a wrong-sized mask fails now, not mid-run
        interval = self.preview_interval.value()
        plan = RunPlan(
            tasks=tasks,
            styles=styles,
            style_weights=weights if len(set(weights)) > 1 else None,
            region_styles=regions,
            options=options,
            yield_to_preset=frozenset(self._yield_to_preset & options.keys()),
            init_image=init_image,
            preview_interval=interval,
            preview_size=0,
            chain_init=True,
        )
        state = ActiveRun(
            control=RunControl(),
            content=content,
            rendering=rendering,
            style_names=names,
            mask_name=mask.name if mask is not None else None,
            region_styles={},  # the worker says which regions it sends
            stack=stack,
            indices=indices,
            style_weights=weights,
            lead=layer_tools.leading_shape(content),
            plane_shape=shape,
            frame=layer_tools.frame_of(content),
            colormap=content.colormap,
            contrast_limits=tuple(float(v) for v in content.contrast_limits),
            style_layers=style_layers,
        )
        return plan, state

    def cancel(self) -> None:
        """Stop the run: cancels the gRPC call, so the server frees its slot at once."""
        if self.run_state is not None:
            self.status.setText("cancelling…")
            self.run_state.control.cancel()

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_event(self, item: Any) -> None:
        state = self.run_state
        if state is None or not self._viewer_events:
            return  # nothing runs, or the panel was closed: no more layers from this run
        if isinstance(item, Regions):
            self._on_regions(state, item)
        elif isinstance(item, Connected):
            state.address = item.address
            self._on_server_info(item.address, item.info)
        elif isinstance(item, JobEvent):
            self._on_job_event(state, item)
        elif isinstance(item, PlaneDone):
            self._on_plane_done(state, item)

    def _on_regions(self, state: ActiveRun, item: Regions) -> None:
        """The labels the run found: the result's metadata says which regions went, and the
        table lists the labels it lacked (an edit made in code sends no event)."""
        mask_name = state.mask_name
        state.region_styles = dict(item.region_styles)
        if not item.region_styles:
            state.mask_name = None  # the mask was not sent
        cached = self._mask_labels
        if cached is not None and cached[0][0] == mask_name:
            labels = sorted(set(cached[1]) | set(item.labels))
            if labels != cached[1]:
                self._mask_labels = (cached[0], labels)
                self._refresh_regions()

    def _on_job_event(self, state: ActiveRun, item: JobEvent) -> None:
        event = item.event
        prefix = f"slice {item.plane + 1}/{item.planes} · " if item.planes > 1 else ""
        if isinstance(event, Queued):
            self.status.setText(
                f"{prefix}queued: position {event.position} of {event.queue_length}"
            )
        elif isinstance(event, Started):
            batch = f" in a batch of {event.batch_size}" if event.batch_size > 1 else ""
            self.status.setText(
                f"{prefix}running on {event.device} at {event.width}x{event.height}{batch}"
            )
        elif isinstance(event, Progress):
            total = max(1, event.total_iterations)
            fraction = (item.plane + event.iteration / total) / item.planes
            self.progress.setValue(round(1000 * fraction))
            losses = " ".join(f"{name} {value:.3g}" for name, value in sorted(event.losses.items()))
            scale = (
                f" · scale {event.scale_index + 1}/{event.scale_count}"
                if event.scale_count > 1
                else ""
            )
            self.status.setText(
                f"{prefix}iteration {event.iteration}/{event.total_iterations}{scale} · "
                f"{losses} · ETA {_duration(event.eta_seconds)}"
            )
            if event.preview is not None:
                self._show_preview(state, item, event.preview)

    def _show_preview(self, state: ActiveRun, item: JobEvent, preview: np.ndarray) -> None:
        results.show_preview(self.viewer, state, item.plane, preview)
        self.previews_shown += 1

    def _on_plane_done(self, state: ActiveRun, item: PlaneDone) -> None:
        results.add_plane_result(self.viewer, state, item)
        self.progress.setValue(round(1000 * (item.plane + 1) / item.planes))

    def _on_outcome(self, outcome: Outcome) -> None:
        self.last_outcome = outcome
        state = self.run_state
        if outcome.status == "failed":
            message = outcome.message
            if state is not None and state.stack and outcome.planes_done:
                message += (
                    f" (at slice {outcome.planes_done + 1} of {len(state.indices)}; the "
                    f"{outcome.planes_done} finished slice(s) are kept, the rest left blank)"
                )
            self.status.setText(message)
            show_error(message)
        elif outcome.status == "cancelled":
            kept = f"; {outcome.planes_done} finished slice(s) kept" if outcome.planes_done else ""
            self.status.setText(f"cancelled{kept}")
            show_info(f"impasto: run cancelled{kept}")
        else:
            name = state.result_layer.name if state and state.result_layer else "the result"
            self.status.setText(f"done: {name}")
            self.progress.setValue(1000)
        if state is not None and state.content not in self.viewer.layers:
            show_warning(
                f"impasto: the content layer {state.content.name!r} was deleted during the run"
                + ("; the result was kept as a new layer" if state.result_layers else "")
            )
        gone = [] if state is None else [
            layer.name for layer in state.style_layers if layer not in self.viewer.layers
        ]  # fmt: skip
        if gone:
            show_warning(
                f"impasto: the style layer(s) {', '.join(map(repr, gone))} were deleted during "
                "the run; the run used them as they were when it began"
            )
        preview = self._layer(PREVIEW_LAYER, Image)
        if preview is not None:
            preview.visible = False  # the result (or the content) is what counts now

    def _on_finished(self) -> None:
        self.run_state = None
        self._control_box[:] = []
        self._set_running(False)

    # ------------------------------------------------------------------ teardown

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            docked = getattr(self, "_docked", None)  # None: still in __init__
            if self.parent() is not None:
                if docked is False:
                    self._docked = True
                    self._attach_viewer_events()  # again, after a removal
            elif docked:
                # napari's remove_dock_widget (the panel's X button) only unparents the widget;
                # hiding, floating or tabbing the panel keeps its parent.
                self._docked = False
                self._on_removed()
        return super().event(event)

    def _on_removed(self) -> None:
        """The panel was closed: stop the run (the server frees its slot), drop the connection
        (a local server stops when no other widget uses it) and stop following the viewer."""
        if self.run_state is not None:
            self.status.setText("cancelling: the panel was closed…")
        self.close_connection()
        self._detach_viewer_events()

    def close_connection(self) -> None:
        """Cancel any run and release the server (the local one stops when unused)."""
        if self.run_state is not None:
            self.run_state.control.cancel()
        self.connection.close()


def _release(connection: Connection, controls: list[Any], *_: Any) -> None:
    for control in list(controls):
        control.cancel()
    connection.close()


def _fill(
    combo: QComboBox,
    names: list[str],
    prefer_not: str | None = None,
    renamed: tuple[str, str] | None = None,
) -> None:
    """Replace a combo's items, keeping its choice when it still exists (under its new name
    when ``renamed`` is (old, new)); a fresh choice avoids ``prefer_not`` when there is
    another."""
    current = combo.currentText()
    if renamed is not None and current == renamed[0]:
        current = renamed[1]
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if current in names and current != prefer_not:
        combo.setCurrentText(current)
    else:
        others = [name for name in names if name != prefer_not]
        if others:
            combo.setCurrentText(others[0])
    combo.blockSignals(False)


def _labels_in(data: Any) -> list[int]:
    """The labels (not 0) in a Labels layer's data, sorted."""
    try:
        values = np.unique(np.asarray(data))
    except Exception:  # noqa: BLE001 - an odd Labels layer just gets no regions
        return []
    return [int(v) for v in values if v != 0]


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
