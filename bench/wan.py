"""pppssh beside the C path on a shaped WAN: throughput, and RTT idle and under load.

From the host: `bash scripts/bench.sh --wan [--quick]`, or
`python3 -m tests.lab --mem 4G run -- python3 -m bench.wan [--rounds N] [--profiles ...]`.

The lab's gateways are joined through a router namespace (Lab.routed_wan: gw-a wan0 <->
router <-> gw-b wan0). On each of the router's two egress links (towards gw-a: the way
down; towards gw-b: the way up) a profile puts netem (one-way delay, loss) with a tbf child
(the rate, and the bottleneck's queue as a byte limit of that many full-size packets):

  4mbit       4 Mbit/s, 20 ms each way (40 ms RTT), a 20-packet queue
  20mbit      20 Mbit/s, 40 ms RTT, a 20-packet queue
  8mbit-loss  8 Mbit/s, 40 ms RTT, a 20-packet queue, 1% loss each way
  unshaped    the router alone

Per profile, in alternating rounds in one boot, the two paths of bench/lab.py (the HOWTO's
pppd over OpenSSH, and pppssh): idle ping ws-a -> ws-b, then iperf3 ws-a -> ws-b (up) and
ws-b -> ws-a (down, -R), each with a ping every 0.2 s alongside. Per round: Mbit/s both
ways, RTT p50, p90 and max idle and under each load; medians over rounds, the ratios
pppssh / HOWTO, and each path's loaded RTT against the floor: its idle RTT plus the time
the WAN queue takes to drain at the profile's rate. Printed as a table; written as JSON
(bench-wan.json) and as one PNG per profile of RTT over time under load, both paths on one
chart (bench-wan-PROFILE.png), in the run's results folder.

--probe samples, every 0.2 s during an upload and a download on the 4 Mbit/s profile,
where the bytes wait: the SSH TCP socket on gw-a and on gw-b (`ss -tmi`: Send-Q, notsent,
cwnd, rtt) and each gateway's ppp qdisc backlog (bench-wan-probe.json).
Timings are never pass/fail: exit status 0 when every round measured both paths, else 1.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import re
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.lab import (
    IPERF_PORT,
    RESULTS,
    BenchError,
    Ends,
    PathSetup,
    howto,
    iperf_mbit,
    iperf_server,
    leftovers,
    percentile,
    ping_rtts,
    pppssh,
    pppssh_with,
)
from tests.lab.netlab import GW_A_WAN, GW_B_WAN, CommandError, Lab, LabError, wait_for

FRAME = 1514  # bytes of one full-size packet on the WAN veth (1500 + Ethernet header)
PING_EVERY = 0.2  # seconds between pings
MODULES = "/usr/lib/uml/modules/{release}/kernel/net/{name}.ko"


@dataclass(frozen=True)
class Profile:
    """One WAN: rate (None: unshaped), one-way delay, queue in full-size packets, loss."""

    name: str
    mbit: float | None = None
    delay_ms: float = 0.0
    queue: int = 0
    loss_pct: float = 0.0

    def queue_ms(self) -> float:
        """How long the bottleneck's full queue takes to drain at the rate, in ms."""
        if self.mbit is None:
            return 0.0
        return self.queue * FRAME * 8 / (self.mbit * 1e6) * 1000

    def describe(self) -> str:
        """One line: what the router does to each direction."""
        if self.mbit is None:
            return "unshaped (the router alone)"
        loss = f", {self.loss_pct:g}% loss" if self.loss_pct else ""
        return (f"{self.mbit:g} Mbit/s, {self.delay_ms:g} ms each way, queue {self.queue} "
                f"packets ({self.queue_ms():.0f} ms){loss}")  # fmt: skip


PROFILES = {
    p.name: p
    for p in (
        Profile("4mbit", 4, 20, 20),
        Profile("20mbit", 20, 20, 20),
        Profile("8mbit-loss", 8, 20, 20, 1.0),
        Profile("unshaped"),
    )
}


def shaping_commands(profile: Profile, dev: str) -> list[list[str]]:
    """tc argv that give dev's egress the profile (netem delay/loss, tbf rate and queue)."""
    clear = ["tc", "qdisc", "del", "dev", dev, "root"]
    if profile.mbit is None:
        return [clear]
    rate = profile.mbit * 1e6
    # tokens for 10 ms (at least two packets): the lab kernel's timers wake tbf about every
    # 7-8 ms, and a burst of 2 ms held a 20 Mbit/s tbf to 5 Mbit/s
    burst = max(2 * FRAME, int(rate / 8 * 0.010))
    netem = ["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
             "delay", f"{profile.delay_ms:g}ms", "limit", "10000"]  # fmt: skip
    if profile.loss_pct:
        netem += ["loss", f"{profile.loss_pct:g}%"]
    tbf = ["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "tbf",
           "rate", f"{profile.mbit:g}mbit", "burst", str(burst),
           "limit", str(profile.queue * FRAME)]  # fmt: skip
    return [clear, netem, tbf]


def load_modules(lab: Lab) -> None:
    """insmod the qdiscs the profiles use (the lab kernel cannot autoload them; tcp_bbr,
    which pppssh's SSH sockets ask for, uml-init loads at boot)."""
    release = lab.run(None, ["uname", "-r"]).stdout.strip()
    for name in ("sched/sch_netem", "sched/sch_tbf"):
        proc = lab.run(None, ["insmod", MODULES.format(release=release, name=name)], check=False)
        if proc.returncode and "File exists" not in proc.stderr:
            raise BenchError(f"insmod {name}: {proc.stderr.strip()}")


def shape(lab: Lab, router: str, profile: Profile) -> None:
    """Apply the profile to both of the router's egress links."""
    for dev in ("to-a", "to-b"):
        for i, argv in enumerate(shaping_commands(profile, dev)):
            lab.run(None, ["ip", "netns", "exec", router, *argv], check=i > 0)


# --- statistics -----------------------------------------------------------------------------


def rtt_stats(rtts: Sequence[float]) -> dict[str, float | None]:
    """p50, p90 and max of a list of RTTs (None each when there are none)."""
    if not rtts:
        return {"p50": None, "p90": None, "max": None}
    values = list(rtts)
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "max": max(values)}


def ping_series(output: str) -> list[tuple[int, float]]:
    """(icmp_seq, RTT ms) of every reply in ping's output."""
    return [(int(s), float(t)) for s, t in re.findall(r"icmp_seq=(\d+) .*?time=([0-9.]+) ms",
                                                      output)]  # fmt: skip


def floor_ms(idle_p50: float | None, profile: Profile) -> float | None:
    """The loaded RTT a path cannot go below: idle RTT plus the WAN queue's drain time."""
    return None if idle_p50 is None else idle_p50 + profile.queue_ms()


@dataclass
class Sample:
    """One round of one path on one profile."""

    profile: str
    path: str
    mbit_up: float | None = None
    mbit_down: float | None = None
    idle: dict[str, float | None] = field(default_factory=dict)
    load_up: dict[str, float | None] = field(default_factory=dict)
    load_down: dict[str, float | None] = field(default_factory=dict)
    series_up: list[tuple[int, float]] = field(default_factory=list)
    series_down: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    left: list[str] = field(default_factory=list)


METRICS = (  # (key, label, unit); key is a Sample field or field.stat
    ("mbit_up", "throughput up (ws-a -> ws-b)", "Mbit/s"),
    ("mbit_down", "throughput down (ws-b -> ws-a)", "Mbit/s"),
    ("idle.p50", "RTT idle p50", "ms"),
    ("idle.p90", "RTT idle p90", "ms"),
    ("load_up.p50", "RTT under upload p50", "ms"),
    ("load_up.p90", "RTT under upload p90", "ms"),
    ("load_up.max", "RTT under upload max", "ms"),
    ("load_down.p50", "RTT under download p50", "ms"),
    ("load_down.p90", "RTT under download p90", "ms"),
    ("load_down.max", "RTT under download max", "ms"),
)
LOADED = [key for key, *_ in METRICS if key.startswith("load_")]


def metric(sample: Sample, key: str) -> float | None:
    """One metric of a sample by its METRICS key."""
    name, _, stat = key.partition(".")
    value = getattr(sample, name)
    return value.get(stat) if stat else value  # type: ignore[no-any-return]


def medians(samples: list[Sample], profile: str, path: str) -> dict[str, float | None]:
    """The median of every metric over the rounds of one path on one profile."""
    out: dict[str, float | None] = {}
    for key, *_ in METRICS:
        got = [metric(s, key) for s in samples if s.profile == profile and s.path == path]
        values = [v for v in got if v is not None]
        out[key] = statistics.median(values) if values else None
    return out


def ratio(mine: float | None, other: float | None) -> float | None:
    """mine / other, or None when either is missing or other is 0."""
    return mine / other if mine is not None and other else None


def summary(samples: list[Sample], profile: Profile) -> dict[str, object]:
    """Medians per path, pppssh / HOWTO ratios, each path's floor and loaded RTT / floor."""
    result: dict[str, object] = {"profile": asdict(profile), "queue_ms": profile.queue_ms()}
    names = list(dict.fromkeys(s.path for s in samples if s.profile == profile.name))
    for path in ["HOWTO", "pppssh", *(n for n in names if n not in ("HOWTO", "pppssh"))]:
        med = medians(samples, profile.name, path)
        floor = floor_ms(med["idle.p50"], profile)
        result[path] = med
        result[f"{path}_floor"] = floor
        result[f"{path}_over_floor"] = {key: ratio(med[key], floor) for key in LOADED}
    ours, theirs = result["pppssh"], result["HOWTO"]
    assert isinstance(ours, dict) and isinstance(theirs, dict)
    result["ratio"] = {key: ratio(ours[key], theirs[key]) for key, *_ in METRICS}
    result["variants"] = [n for n in names if n not in ("HOWTO", "pppssh")]
    for variant in result["variants"]:  # type: ignore[union-attr]
        mine = result[variant]
        assert isinstance(mine, dict)
        result[f"{variant}_ratio"] = {key: ratio(mine[key], theirs[key]) for key, *_ in METRICS}
    return result


def table(result: dict[str, object]) -> str:
    """One profile's medians, ratios and floors as a text table."""

    def get(name: str) -> dict[str, float | None]:
        value = result[name]
        assert isinstance(value, dict)
        return value

    def cell(v: float | None, fmt: str = "") -> str:
        if v is None:
            return "-"
        return format(v, fmt) if fmt else f"{v:.3g}" if v < 100 else f"{v:.0f}"

    theirs, ours, rat = get("HOWTO"), get("pppssh"), get("ratio")
    over_t, over_o = get("HOWTO_over_floor"), get("pppssh_over_floor")
    rows = [("metric (median)", "unit", "HOWTO", "pppssh", "pppssh/HOWTO", "HOWTO/floor",
             "pppssh/floor")]  # fmt: skip
    for key, label, unit in METRICS:
        rows.append((label, unit, cell(theirs[key]), cell(ours[key]), cell(rat[key], ".2f"),
                     cell(over_t.get(key), ".2f"), cell(over_o.get(key), ".2f")))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    floor_t, floor_o = result["HOWTO_floor"], result["pppssh_floor"]
    assert floor_t is None or isinstance(floor_t, float)
    assert floor_o is None or isinstance(floor_o, float)
    lines.append(f"floor = idle RTT p50 + WAN queue ({result['queue_ms']:.0f} ms): "
                 f"HOWTO {cell(floor_t)} ms, pppssh {cell(floor_o)} ms")  # fmt: skip
    return "\n".join(lines)


def variant_table(result: dict[str, object]) -> str:
    """The levers tried beside pppssh's defaults: each metric's median per path, and each
    path's ratio to the HOWTO path measured in the same run ("" when none was tried)."""
    variants = result.get("variants") or []
    assert isinstance(variants, list)
    if not variants:
        return ""
    names = ["HOWTO", "pppssh", *variants]
    rows = [("metric (median)", *names, *(f"{n}/HOWTO" for n in names[1:]))]
    for key, label, unit in METRICS:
        values = []
        for name in names:
            got = result[name]
            assert isinstance(got, dict)
            v = got.get(key)
            values.append("-" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}")
        ratios = []
        for name in names[1:]:
            got = result["ratio" if name == "pppssh" else f"{name}_ratio"]
            assert isinstance(got, dict)
            r = got.get(key)
            ratios.append("-" if r is None else f"{r:.2f}")
        rows.append((f"{label}, {unit}", *values, *ratios))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]  # fmt: skip
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """NAME:key=value,key=value -> (NAME, {key: value}); the keys are [remote] site keys,
    or section.key for others (ppp.qdisc=default)."""
    name, sep, rest = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_+.-]+", name):
        raise ValueError(f"variant {text!r}: want NAME:key=value,...")
    keys = {}
    for item in filter(None, (i.strip() for i in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"variant {text!r}: {item!r} is not key=value")
        keys[key.strip()] = value.strip()
    return name, keys


# --- a PNG of RTT over time, on the standard library alone ------------------------------------

# 3x5 glyphs, one row per number, bit 4 the left column
GLYPHS = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), "A": (2, 5, 7, 5, 5), "B": (6, 5, 6, 5, 6),
    "C": (3, 4, 4, 4, 3), "D": (6, 5, 5, 5, 6), "E": (7, 4, 6, 4, 7), "F": (7, 4, 6, 4, 4),
    "G": (3, 4, 5, 5, 3), "H": (5, 5, 7, 5, 5), "I": (7, 2, 2, 2, 7), "J": (1, 1, 1, 5, 2),
    "K": (5, 5, 6, 5, 5), "L": (4, 4, 4, 4, 7), "M": (5, 7, 7, 5, 5), "N": (6, 5, 5, 5, 5),
    "O": (2, 5, 5, 5, 2), "P": (6, 5, 6, 4, 4), "Q": (2, 5, 5, 6, 3), "R": (6, 5, 6, 5, 5),
    "S": (3, 4, 2, 1, 6), "T": (7, 2, 2, 2, 2), "U": (5, 5, 5, 5, 7), "V": (5, 5, 5, 5, 2),
    "W": (5, 5, 7, 7, 5), "X": (5, 5, 2, 5, 5), "Y": (5, 5, 2, 2, 2), "Z": (7, 1, 2, 4, 7),
    " ": (0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "/": (1, 1, 2, 4, 4),
    ":": (0, 2, 0, 2, 0), "(": (1, 2, 2, 2, 1), ")": (4, 2, 2, 2, 4), "%": (5, 1, 2, 4, 5),
    ">": (4, 2, 1, 2, 4), "=": (0, 7, 0, 7, 0), ",": (0, 0, 0, 2, 4),
}  # fmt: skip
Color = tuple[int, int, int]
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)
COLORS = {"HOWTO": (31, 119, 180), "pppssh": (214, 39, 40), "floor": (120, 120, 120)}


class Canvas:
    """An RGB image in memory with lines and 3x5 text, saved as PNG."""

    def __init__(self, width: int, height: int) -> None:
        """A white canvas."""
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * width * height)

    def dot(self, x: int, y: int, color: Color) -> None:
        """Set one pixel (outside the canvas: nothing)."""
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, dash: int = 0) -> None:
        """A straight line (Bresenham), dashed every `dash` pixels if dash > 0."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                self.dot(x0, y0, color)
            n += 1
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, words: str, color: Color = BLACK, scale: int = 2) -> None:
        """Write text with its top left corner at (x, y); unknown characters as blanks."""
        for ch in words.upper():
            for row, bits in enumerate(GLYPHS.get(ch, GLYPHS[" "])):
                for col in range(3):
                    if bits & (4 >> col):
                        for i in range(scale):
                            for j in range(scale):
                                self.dot(x + col * scale + i, y + row * scale + j, color)
            x += 4 * scale

    def png(self) -> bytes:
        """The image as PNG bytes (8-bit RGB, no filter, zlib)."""

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        stride = 3 * self.width
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))  # fmt: skip


def nice_step(span: float) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about five ticks over span."""
    raw = max(span, 1e-9) / 5
    mag = 10.0 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if raw <= m * mag * (1 + 1e-9))


def panel(
    canvas: Canvas,
    top: int,
    height: int,
    title: str,
    series: dict[str, list[tuple[float, float]]],
    floor: float | None,
) -> None:
    """One chart: RTT (ms) over time (s) of each named series, the floor dashed."""
    left, right = 70, canvas.width - 20
    plot_top, plot_bottom = top + 30, top + height - 40
    points = [p for s in series.values() for p in s]
    t_max = max([t for t, _ in points] + [1.0])
    y_max = max([v for _, v in points] + [floor or 0.0, 1.0]) * 1.05
    step = nice_step(y_max)

    def px(t: float, v: float) -> tuple[int, int]:
        x = left + round((right - left) * t / t_max)
        y = plot_bottom - round((plot_bottom - plot_top) * min(v, y_max) / y_max)
        return x, y

    canvas.text(left, top + 8, title)
    tick = 0.0
    while tick <= y_max:
        _, y = px(0, tick)
        canvas.line(left, y, right, y, GREY)
        canvas.text(8, y - 5, f"{tick:g}")
        tick += step
    tstep = nice_step(t_max)
    tick = 0.0
    while tick <= t_max:
        x, _ = px(tick, 0)
        canvas.line(x, plot_bottom, x, plot_bottom + 5, BLACK)
        canvas.text(x - 6, plot_bottom + 10, f"{tick:g}")
        tick += tstep
    canvas.text(right - 90, plot_bottom + 22, "TIME S")
    canvas.text(8, plot_top - 18, "RTT MS")
    canvas.line(left, plot_top, left, plot_bottom, BLACK)
    canvas.line(left, plot_bottom, right, plot_bottom, BLACK)
    if floor is not None:
        _, y = px(0, floor)
        canvas.line(left, y, right, y, COLORS["floor"], dash=6)
    legend_x = left + 10 + 8 * len(title) + 30
    for name, pts in series.items():
        color = COLORS.get(name, BLACK)
        for (t0, v0), (t1, v1) in itertools.pairwise(pts):
            canvas.line(*px(t0, v0), *px(t1, v1), color)
        canvas.line(legend_x, top + 13, legend_x + 20, top + 13, color)
        canvas.text(legend_x + 26, top + 8, name, color)
        legend_x += 26 + 8 * len(name) + 30
    if floor is not None:
        canvas.line(legend_x, top + 13, legend_x + 20, top + 13, COLORS["floor"], dash=4)
        canvas.text(legend_x + 26, top + 8, "FLOOR", COLORS["floor"])


def plot(samples: list[Sample], profile: Profile, floor: float | None) -> bytes:
    """The PNG of one profile: RTT under upload and under download, both paths, the first
    round that measured both."""
    canvas = Canvas(960, 640)
    for i, (attr, what) in enumerate((("series_up", "upload"), ("series_down", "download"))):
        series: dict[str, list[tuple[float, float]]] = {}
        for path in ("HOWTO", "pppssh"):
            got = [s for s in samples if s.profile == profile.name and s.path == path
                   and getattr(s, attr)]  # fmt: skip
            if got:
                series[path] = [((seq - 1) * PING_EVERY, v) for seq, v in getattr(got[0], attr)]
        title = f"{profile.name}: RTT WS-A TO WS-B UNDER {what}"
        panel(canvas, i * 320, 320, title, series, floor)
    return canvas.png()


# --- measuring ------------------------------------------------------------------------------


def ping_idle(lab: Lab, ends: Ends, count: int) -> list[float]:
    """RTTs of count pings from the client to the server, one every 0.2 s, no load."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(PING_EVERY), "-W", "3", ends.addr]
    rtts = ping_rtts(lab.run(ends.client, argv, check=False, timeout=count + 30).stdout)
    if len(rtts) < count // 2:
        raise BenchError(f"ping: only {len(rtts)} of {count} replies")
    return rtts


def loaded(
    lab: Lab, ends: Ends, seconds: int, reverse: bool, during: Callable[[], None] | None = None
) -> tuple[float, list[tuple[int, float]]]:
    """iperf3 for `seconds` (the first omitted) with pings every 0.2 s from its 2nd second
    to one second before its end: (Mbit/s, [(icmp_seq, RTT)])."""
    argv = ["iperf3", "-c", ends.addr, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1",
            "-J", *(["-R"] if reverse else [])]  # fmt: skip
    load = lab.spawn(ends.client, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)  # fmt: skip
    try:
        time.sleep(2.0)
        if during:
            during()
        count = max(5, int((seconds + 1 - 3) / PING_EVERY))
        argv = ["ping", "-n", "-c", str(count), "-i", str(PING_EVERY), "-W", "3", ends.addr]
        out = lab.run(ends.client, argv, check=False, timeout=seconds + 60).stdout
        stdout, stderr = load.communicate(timeout=seconds + 60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    try:
        mbit, _ = iperf_mbit(stdout.decode(errors="replace"))
    except (ValueError, KeyError, TypeError):
        why = stderr.decode(errors="replace").strip() or stdout.decode(errors="replace")[-300:]
        raise BenchError(f"iperf3 exited {load.returncode}: {why}") from None
    series = ping_series(out)
    if len(series) < count // 2:
        raise BenchError(f"ping under load: only {len(series)} of {count} replies")
    return mbit, series


def measure(
    lab: Lab, profile: Profile, name: str, path: PathSetup, seconds: int, pings: int
) -> Sample:
    """Bring one path up, measure idle and loaded RTT and throughput, tear it down."""
    print(f"\n### {profile.name} {name}", flush=True)
    sample = Sample(profile.name, name)
    try:
        with path(lab) as ends, iperf_server(lab, ends.server, ends.addr):
            sample.idle = rtt_stats(ping_idle(lab, ends, pings))
            sample.mbit_up, sample.series_up = loaded(lab, ends, seconds, reverse=False)
            sample.load_up = rtt_stats([v for _, v in sample.series_up])
            sample.mbit_down, sample.series_down = loaded(lab, ends, seconds, reverse=True)
            sample.load_down = rtt_stats([v for _, v in sample.series_down])
        shown = {k: metric(sample, k) for k, *_ in METRICS}
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in shown.items() if v is not None),
              flush=True)  # fmt: skip
    except (BenchError, CommandError, LabError, subprocess.TimeoutExpired, OSError) as exc:
        sample.error = str(exc).strip()
        print(f"  FAILED: {sample.error}", flush=True)
    if not wait_for(lambda: not leftovers(lab), timeout=30, interval=0.5):
        sample.left = leftovers(lab)
        print(f"  LEFT BEHIND: {'; '.join(sample.left)}", flush=True)
        lab.reset()
    return sample


# --- where the queue sits -------------------------------------------------------------------

# bash, so that the clock ($EPOCHREALTIME) and the pause (read -t on a fifo nobody writes)
# cost no fork: in the lab kernel each fork and exec is slow, and ss and tc are two already.
SAMPLER = """\
f=$(mktemp -u); mkfifo "$f"; exec 3<>"$f"; rm -f "$f"
while :; do
  echo "@ $EPOCHREALTIME"
  ss -Hntmi state established '( {filter} )'
  tc -s qdisc show dev {dev}
  read -r -t {every} -u 3 || :
done
"""
# the router's two bottleneck queues (tbf), to-a the way down and to-b the way up
ROUTER_SAMPLER = """\
f=$(mktemp -u); mkfifo "$f"; exec 3<>"$f"; rm -f "$f"
while :; do
  echo "@ $EPOCHREALTIME"
  for d in to-a to-b; do echo "# $d"; tc -s qdisc show dev $d; done
  read -r -t {every} -u 3 || :
done
"""
WAN_QUEUES = {"to-a": "wan_queue_down", "to-b": "wan_queue_up"}
BYTE_KEYS = ("send_q", "notsent", "unacked", "ppp_backlog", *WAN_QUEUES.values())


def parse_probe(text: str) -> list[dict[str, float]]:
    """The ticks of one sampler's output: time, and per tick the SSH socket's Send-Q,
    notsent, unacked, cwnd and rtt, the ppp qdisc's backlog bytes and packets and its drop
    counter, or (after a
    `# to-a` or `# to-b` line) the backlog of the router's tbf on that link."""
    ticks: list[dict[str, float]] = []
    tick: dict[str, float] = {}
    dev, kind = "", ""
    for line in text.splitlines():
        if line.startswith("@ "):
            tick, dev, kind = {"t": float(line[2:])}, "", ""
            ticks.append(tick)
        elif not tick:
            continue
        elif line.startswith("# "):
            dev = line[2:].strip()
        elif m := re.match(r"qdisc (\S+)", line):
            kind = m[1]
        elif dev and (m := re.search(r"backlog (\d+)b", line)):
            if kind == "tbf" and dev in WAN_QUEUES:
                tick[WAN_QUEUES[dev]] = float(m[1])
        elif m := re.match(r"(\d+)\s+(\d+)\s+\S+:\d+\s+\S+:\d+", line):
            tick["recv_q"], tick["send_q"] = float(m[1]), float(m[2])
        elif not dev and (m := re.search(r"\(dropped (\d+),", line)):
            tick["ppp_dropped"] = tick.get("ppp_dropped", 0.0) + float(m[1])
        elif m := re.search(r"backlog (\d+)b (\d+)p", line):
            tick["ppp_backlog"] = tick.get("ppp_backlog", 0.0) + float(m[1])
            tick["ppp_backlog_p"] = tick.get("ppp_backlog_p", 0.0) + float(m[2])
        elif "cwnd:" in line or "rtt:" in line:
            tick.update(notsent=0.0, unacked=0.0)  # ss leaves out a count that is 0
            for key, pat in (("notsent", r"notsent:(\d+)"), ("unacked", r"unacked:(\d+)"),
                             ("cwnd", r"cwnd:(\d+)"), ("rtt", r"\brtt:([0-9.]+)/")):  # fmt: skip
                if m := re.search(pat, line):
                    tick[key] = float(m[1])
    return ticks


def probe_summary(ticks: list[dict[str, float]], mbit: float) -> dict[str, dict[str, float]]:
    """Median and max of each sampled quantity; bytes also as ms of queue at mbit."""
    out: dict[str, dict[str, float]] = {}
    for key in (*BYTE_KEYS, "cwnd", "rtt", "ppp_backlog_p"):
        values = [t[key] for t in ticks if key in t]
        if not values:
            continue
        row = {"p50": statistics.median(values), "max": max(values), "n": float(len(values))}
        if key in BYTE_KEYS:
            row["p50_ms"] = row["p50"] * 8 / (mbit * 1e6) * 1000
            row["max_ms"] = row["max"] * 8 / (mbit * 1e6) * 1000
        out[key] = row
    dropped = [t["ppp_dropped"] for t in ticks if "ppp_dropped" in t]
    if dropped:  # a counter: what it grew by while sampled
        out["ppp_dropped"] = {"during": max(dropped) - min(dropped), "n": float(len(dropped))}
    return out


PROBE_ROWS = (  # (where, key, label)
    ("gw-a", "send_q", "gw-a SSH socket Send-Q (unacked + notsent)"),
    ("gw-a", "notsent", "gw-a SSH socket notsent"),
    ("gw-a", "ppp_backlog", "gw-a ppp qdisc backlog"),
    ("router", "wan_queue_up", "WAN queue, way up (router to-b)"),
    ("router", "wan_queue_down", "WAN queue, way down (router to-a)"),
    ("gw-b", "send_q", "gw-b sshd socket Send-Q (unacked + notsent)"),
    ("gw-b", "notsent", "gw-b sshd socket notsent"),
    ("gw-b", "ppp_backlog", "gw-b ppp qdisc backlog"),
)


def probe_table(probed: dict[str, object]) -> str:
    """Where the bytes sit, per path and direction: median and max bytes, and the median as
    ms of queue at the probed rate."""
    lines = []
    for path, found in probed.items():
        if not isinstance(found, dict) or "error" in found:
            lines.append(f"{path}: no probe ({found})")
            continue
        for direction in ("upload", "download"):
            got = found.get(direction)
            if not isinstance(got, dict):
                continue
            rtt = got["rtt"]
            lines.append(f"{path}, {direction} ({got['mbit']:.2f} Mbit/s; ping RTT p50 "
                         f"{rtt['p50']} ms, p90 {rtt['p90']} ms):")  # fmt: skip
            for where, key, label in PROBE_ROWS:
                row = got.get(where, {}).get(key)
                if row is None:
                    lines.append(f"  {label:48} -")
                    continue
                lines.append(f"  {label:48} p50 {row['p50']:8.0f} B = {row['p50_ms']:5.0f} ms,"
                             f"  max {row['max']:8.0f} B  ({row['n']:.0f} samples)")  # fmt: skip
            drops = [f"{w} {got[w]['ppp_dropped']['during']:.0f}" for w in ("gw-a", "gw-b")
                     if "ppp_dropped" in got.get(w, {})]  # fmt: skip
            lines.append("  ppp qdisc drops while sampled (the pty was full): " + ", ".join(drops))
            cwnd = [f"{w} cwnd {got[w]['cwnd']['p50']:.0f} rtt {got[w]['rtt']['p50']:.0f} ms"
                    for w in ("gw-a", "gw-b") if "cwnd" in got.get(w, {})
                    and "rtt" in got[w]]  # fmt: skip
            lines.append("  SSH TCP p50: " + "; ".join(cwnd))
    return "\n".join(lines)


def _samplers(
    lab: Lab,
    router: str,
    filters: dict[str, str],
    files: dict[str, Path],
    into: list[subprocess.Popen[bytes]],
) -> None:
    """Start one sampler per gateway (filter: its SSH socket) and one in the router, each
    writing to its file."""
    with files["router"].open("wb") as out:
        argv = [
            "ip",
            "netns",
            "exec",
            router,
            "bash",
            "-c",
            ROUTER_SAMPLER.format(every=PING_EVERY),
        ]
        into.append(lab.spawn(None, argv, stdout=out, stderr=subprocess.DEVNULL))
    for gw, flt in filters.items():
        dev = next((str(link["name"]) for link in lab.ppp_links(gw)), "ppp0")
        script = SAMPLER.format(filter=flt, every=PING_EVERY, dev=dev)
        with files[gw].open("wb") as out:
            into.append(
                lab.spawn(gw, ["bash", "-c", script], stdout=out, stderr=subprocess.DEVNULL)
            )


def probe(
    lab: Lab, router: str, profile: Profile, name: str, path: PathSetup, seconds: int
) -> dict[str, object]:
    """During an upload and a download, sample every 0.2 s the SSH sockets and ppp qdiscs on
    both gateways and the router's queues; return the loaded RTTs and each quantity's median
    and max."""
    print(f"\n### probe {profile.name} {name}", flush=True)
    found: dict[str, object] = {}
    filters = {"gw-a": f"dst {GW_B_WAN} and dport = :22", "gw-b": f"src {GW_B_WAN} and sport = :22"}
    with path(lab) as ends, iperf_server(lab, ends.server, ends.addr):
        for direction, reverse in (("upload", False), ("download", True)):
            files = {
                where: RESULTS / f"bench-wan-probe-{name}-{direction}-{where}.txt"
                for where in (*filters, "router")
            }
            samplers: list[subprocess.Popen[bytes]] = []
            start = functools.partial(_samplers, lab, router, filters, files, samplers)
            try:
                mbit, series = loaded(lab, ends, seconds, reverse, during=start)
            finally:
                for proc in samplers:
                    proc.terminate()
                    proc.wait(10)
            rtts = [v for _, v in series]
            found[direction] = {
                "mbit": mbit,
                "rtt": rtt_stats(rtts),
                **{gw: probe_summary(parse_probe(files[gw].read_text()), profile.mbit or 1e3)
                   for gw in (*filters, "router")},
            }  # fmt: skip
            print(f"  {direction}: {json.dumps(found[direction])}", flush=True)
    return found


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Build the lab with a WAN router, measure each profile in alternating rounds, report."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench.wan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path and profile (3)")
    parser.add_argument("--time", type=int, default=15, help="seconds per iperf3 run (15)")
    parser.add_argument("--pings", type=int, default=25, help="idle pings per round (25)")
    parser.add_argument("--profiles", default=",".join(PROFILES),
                        help=f"comma-separated, of {', '.join(PROFILES)} (all)")  # fmt: skip
    parser.add_argument("--probe", action="store_true",
                        help="also sample where the queue sits on the 4mbit profile")  # fmt: skip
    parser.add_argument("--probe-only", action="store_true", help="only the probe")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,...",
                        help="also pppssh with these site keys ([remote] by name, others "
                        "section.key), alternating with the others; repeatable")  # fmt: skip
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PROFILES]
    if unknown:
        parser.error(f"unknown profile {', '.join(unknown)}; known: {', '.join(PROFILES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    samples: list[Sample] = []
    results: dict[str, dict[str, object]] = {}
    probed: dict[str, object] = {}
    failed = False
    paths: list[tuple[str, PathSetup]] = [("HOWTO", howto), ("pppssh", pppssh)]
    for text in args.variant:
        try:
            vname, keys = parse_variant(text)
        except ValueError as exc:
            parser.error(str(exc))
        paths.append((vname, pppssh_with(keys)))
    with Lab() as lab, lab.routed_wan() as router:
        load_modules(lab)
        print(f"lab built in {time.monotonic() - start:.1f} s, router {router} between "
              f"{GW_A_WAN} and {GW_B_WAN}; logs in {RESULTS}", flush=True)  # fmt: skip
        for name in [] if args.probe_only else chosen:
            profile = PROFILES[name]
            shape(lab, router, profile)
            print(f"\n## profile {name}: {profile.describe()}", flush=True)
            for rnd in range(args.rounds):
                order = paths[rnd % len(paths) :] + paths[: rnd % len(paths)]
                for path_name, path in order if rnd % 2 == 0 else order[::-1]:
                    samples.append(measure(lab, profile, path_name, path, args.time, args.pings))
        if args.probe or args.probe_only:
            profile = PROFILES["4mbit"]
            shape(lab, router, profile)
            for path_name, path in paths[:2][::-1]:
                try:
                    probed[path_name] = probe(lab, router, profile, path_name, path, args.time)
                except (BenchError, CommandError, LabError, subprocess.TimeoutExpired,
                        OSError) as exc:  # fmt: skip
                    probed[path_name] = {"error": str(exc).strip()}
                    print(f"  FAILED: {exc}", flush=True)
                    failed = True
        shape(lab, router, PROFILES["unshaped"])
    texts = []
    for name in [] if args.probe_only else chosen:
        profile = PROFILES[name]
        result = summary(samples, profile)
        results[name] = result
        text = f"## {name}: {profile.describe()}\n{table(result)}"
        if result.get("variants"):
            text += f"\n\nlevers (pppssh with site keys), same run:\n{variant_table(result)}"
        texts.append(text)
        floor = result["pppssh_floor"]
        assert floor is None or isinstance(floor, float)
        (RESULTS / f"bench-wan-{name}.png").write_bytes(plot(samples, profile, floor))
    if probed:
        texts.append(f"## where the queue sits (4mbit)\n{probe_table(probed)}")
    took = time.monotonic() - start
    report = "\n\n".join(texts)
    print(f"\n{args.rounds} rounds per profile, alternating; iperf3 {args.time} s; medians\n\n"
          f"{report}\n\nbenchmark took {took:.0f} s inside UML", flush=True)  # fmt: skip
    data = {"rounds": args.rounds, "iperf_seconds": args.time, "idle_pings": args.pings,
            "ping_every": PING_EVERY, "profiles": results, "probe": probed,
            "samples": [asdict(s) for s in samples]}  # fmt: skip
    (RESULTS / "bench-wan.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "bench-wan.txt").write_text(report + "\n")
    failed = failed or any(s.error or s.left for s in samples)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
