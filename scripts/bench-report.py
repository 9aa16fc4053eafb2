#!/usr/bin/env python3
"""Rewrites the generated tables of BENCHMARKS.md from the results of one `make bench` run.

Reads, under the results directory (`$BENCH_OUT`, default `<target>/bench`):

* criterion's `criterion/**/new/{benchmark,estimates}.json` (`make bench` points
  `CRITERION_HOME` there, so that only this run's benchmarks are found);
* the JSON the other harnesses write: `http_load.json`, `conn_memory.json`,
  `proxy_latency.json`, `ffi.json`, `python.json`, `node.json`;
* `agent_cache.txt`, the text the agent_cache harness prints;
* `run.json`, written by `--start` when the run began (date, commit, load, quick mode).

Each table sits between `<!-- bench:table:NAME -->` and `<!-- /bench:table:NAME -->` in
BENCHMARKS.md; everything outside the markers is hand-written and left alone. A table whose
results are missing keeps its earlier contents, and the machine table says which ones those
are. Criterion groups nobody described here still get rows (in the mTLS table when they hold
a `rustls` baseline, else in the "other" table), so new benchmarks show up without edits.

    scripts/bench-report.py --start                 (at the start of the run)
    scripts/bench-report.py --write BENCHMARKS.md   (after it; quick results are refused)
    scripts/bench-report.py                         (prints the rewritten file)

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_num(x: float, digits: int = 3) -> str:
    """About `digits` significant digits, with thousands separators."""
    if x == 0:
        return "0"
    mag = len(str(int(abs(x)))) if abs(x) >= 1 else 0
    decimals = max(0, digits - mag) if abs(x) >= 1 else digits
    return f"{x:,.{decimals}f}"


def fmt_time_ns(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{fmt_num(ns / scale)} {unit}"
    return f"{fmt_num(ns)} ns"


def fmt_bytes(b: float) -> str:
    if abs(b) >= 1024:
        return f"{fmt_num(b / 1024)} KiB"
    return f"{fmt_num(b)} B"


def fmt_rate(per_s: float, unit: str = "/s") -> str:
    return f"{per_s:,.0f}{unit}"


def fmt_ratio(r: Optional[float], pct: bool = False) -> str:
    if r is None:
        return "—"
    if pct:
        # Truncated, not rounded: 94.97 % must not read "95.0 %" beside a ≥ 95 % target it misses.
        return f"{math.floor(r * 1000) / 10:.1f} %"
    if 0 < r < 0.1:
        # 0.002× says little; "1/624" says how many times smaller.
        return f"1/{fmt_num(1 / r)}"
    return f"{fmt_num(r)}×"


class Row:
    """One measured figure: what, value, its baseline, the ratio, the target and its verdict."""

    def __init__(
        self,
        what: str,
        value: str,
        baseline: str = "—",
        ratio: str = "—",
        target: str = "—",
        met: Optional[bool] = None,
    ) -> None:
        self.what, self.value, self.baseline, self.ratio = what, value, baseline, ratio
        self.target, self.met = target, met

    def cells(self) -> List[str]:
        verdict = "—" if self.met is None else ("met" if self.met else "**not met**")
        return [self.what, self.value, self.baseline, self.ratio, self.target, verdict]


HEADER = ["what was measured", "value", "baseline", "ratio to baseline", "target", "met"]


def table(rows: List[Row], header: List[str] = HEADER) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = r.cells() if isinstance(r, Row) else r
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Inputs


class Criterion:
    """criterion's results: medians (ns per iteration) keyed by full ID."""

    def __init__(self, root: Path) -> None:
        self.bench: Dict[str, Dict[str, Any]] = {}
        if not root.is_dir():
            return
        for b in sorted(root.rglob("new/benchmark.json")):
            try:
                meta = json.loads(b.read_text())
                est = json.loads((b.parent / "estimates.json").read_text())
            except (OSError, ValueError):
                continue
            self.bench[meta["full_id"]] = {
                "group": meta.get("group_id"),
                "function": meta.get("function_id"),
                "value": meta.get("value_str"),
                "throughput": meta.get("throughput"),
                "median_ns": est["median"]["point_estimate"],
                "mean_ns": est["mean"]["point_estimate"],
            }

    def get(self, full_id: str) -> Optional[Dict[str, Any]]:
        return self.bench.get(full_id)

    def median(self, full_id: str) -> Optional[float]:
        b = self.bench.get(full_id)
        return b["median_ns"] if b else None

    def groups(self) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for fid, b in self.bench.items():
            out.setdefault(b["group"], []).append(fid)
        return out


def load_json(out: Path, name: str) -> Optional[Dict[str, Any]]:
    p = out / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


DURATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*(ns|µs|us|ms|s)\b")
UNIT_NS = {"ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def parse_agent_cache(text: str) -> Dict[str, Tuple[str, str]]:
    """`label: figure` lines of the agent_cache harness, by label (text before the colon)."""
    out: Dict[str, Tuple[str, str]] = {}
    for line in text.splitlines():
        if ":" not in line or line.startswith(("wrote ", "Running", "Finished", "Compiling")):
            continue
        label, rest = line.split(":", 1)
        out[label.strip()] = (rest.strip(), line.strip())
    return out


def find_line(lines: Dict[str, Tuple[str, str]], *needles: str) -> Optional[str]:
    """The full line whose label contains every needle."""
    for label, (_, full) in lines.items():
        if all(n in label for n in needles):
            return full
    return None


def duration_ns(text: Optional[str]) -> Optional[float]:
    """The last duration in `text` (Rust's `{:?}` of a Duration, or `12.3 ns`)."""
    if not text:
        return None
    found = DURATION.findall(text.split(":", 1)[-1])
    if not found:
        return None
    v, unit = found[-1]
    return float(v) * UNIT_NS[unit]


def kib(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    m = re.findall(r"(\d+(?:\.\d+)?)\s*KiB", text)
    return float(m[-1]) if m else None


# ---------------------------------------------------------------------------------------------
# Machine


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> Dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    osname = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    u = platform.uname()
    return {
        "cpu": cpu or u.processor or u.machine,
        "cores": str(os.cpu_count() or "?"),
        "memory": mem,
        "os": osname,
        "kernel": f"{u.system} {u.release} {u.machine}",
        "rustc": sh("rustc", "-V"),
    }


def git_state() -> Dict[str, str]:
    commit = sh("git", "rev-parse", "--short=12", "HEAD")
    dirty = bool(sh("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "branch": sh("git", "rev-parse", "--abbrev-ref", "HEAD"),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------------------------
# Sections: each returns the block's Markdown, or None when this run has nothing for it.

# The targets of the earlier issues.
CA_TARGET_PER_S = 10_000
AUTHORIZE_TARGET_NS = 100
AUTHORIZE_AT = "100000"
WARM_TARGET_NS = 100
SERVICE_MEMORY_TARGET_KIB = 4.0
COLD_START_TARGET_NS = 50e6
TLS_TARGET = 0.95
# Issue 20: with the verified-chain cache, full handshakes between repeat peers at ≥ 110 % of
# bare rustls (which verifies every chain).
CACHED_FULL_TARGET = 1.10
FFI_TARGET = 0.90
# Issue 20: Node libconnect at least as fast as plain Node `tls` with the same certificates.
NODE_TARGET = 1.00
# Issue 20: 10,000 connections held by one listener, heap per connection within 10 % of bare
# tokio-rustls.
HELD_CONNECTIONS = 10_000
HELD_HEAP_TARGET = 1.10
# Consul's documentation: about 100 signings per second on a 2017 laptop.
CONSUL_SIGN_PER_S = 100

CRITERION_CMD = "cargo bench -p connect-core --bench {}"


def per_round(ratio: Dict[str, Any]) -> str:
    """A per-round ratio's median and range, as the stacks-in-turn harnesses report them."""
    return (f"{fmt_ratio(ratio['median'], pct=True)} per round, median "
            f"({fmt_ratio(ratio['min'], pct=True)}–{fmt_ratio(ratio['max'], pct=True)})")


class Report:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.crit = Criterion(out / "criterion")
        self.json = {n: load_json(out, n)
                     for n in ("ca_vault", "http_load", "conn_memory", "proxy_latency", "ffi", "python", "node",
                               "tls_loopback", "tls_handshakes")}
        try:
            self.agent_text: Optional[str] = (out / "agent_cache.txt").read_text()
        except OSError:
            self.agent_text = None
        self.agent = parse_agent_cache(self.agent_text or "")
        self.run = load_json(out, "run") or {}
        # (table, target, measured, met) for the summary, in the order the sections add them;
        # `section` is the title of the table being rendered.
        self.targets: List[Tuple[str, Row]] = []
        self.section = ""
        self.claimed: set = set()

    @property
    def quick(self) -> bool:
        return bool(self.run.get("quick")) or any(j and j.get("quick") for j in self.json.values())

    def target(self, what: str, value: str, target: str, met: Optional[bool]) -> None:
        self.targets.append((self.section, Row(what, value, target=target, met=met)))

    def reproduce(self, *cmds: str, medians: bool = False) -> str:
        text = "Reproduce: " + "; ".join(f"`{c}`" for c in cmds) + "."
        return text + (" Values are criterion's medians." if medians else "")

    # -- CA -----------------------------------------------------------------------------------

    def ca(self) -> Optional[str]:
        sign, csr = self.crit.median("ca/sign_leaf_p256"), self.crit.median("ca/leaf_key_and_csr_p256")
        self.claimed.update(f for f in self.crit.bench if self.crit.bench[f]["group"] == "ca")
        if sign is None and csr is None:
            return None
        rows = []
        if sign is not None:
            rate = 1e9 / sign
            met = rate >= CA_TARGET_PER_S
            rows.append(Row(
                "`CaManager::sign_leaf`: parse + verify CSR, identity checks, sign, bundle (one core)",
                f"{fmt_time_ns(sign)} = {fmt_rate(rate)}",
                f"Consul's documented ~{CONSUL_SIGN_PER_S}/s",
                fmt_ratio(rate / CONSUL_SIGN_PER_S),
                f"≥ {CA_TARGET_PER_S:,}/s", met,
            ))
            self.target("CA signing rate, one core", fmt_rate(rate), f"≥ {CA_TARGET_PER_S:,}/s", met)
        if csr is not None:
            rows.append(Row(
                "agent side: EC P-256 key + CSR (in the service's own process)",
                f"{fmt_time_ns(csr)} = {fmt_rate(1e9 / csr)}",
                f"`sign_leaf`: {fmt_time_ns(sign)}" if sign else "—",
                fmt_ratio(csr / sign) if sign else "—",
            ))
        return table(rows) + "\n\n" + self.reproduce(CRITERION_CMD.format("ca_sign"), medians=True)

    def ca_vault(self) -> Optional[str]:
        j = self.json["ca_vault"]
        if not j:
            return None
        r, p = j["results"], j["params"]
        b, v = r["builtin"], r["vault"]
        rows = [
            Row("`CaManager::sign_leaf`, built-in CA", f"{fmt_rate(b['per_s'])} (p50 {b['p50_us']:,.0f} µs)",
                "(baseline)"),
            Row("`CaManager::sign_leaf` through Vault (OpenBao dev server on loopback, `sign/leaf-cert`)",
                f"{fmt_rate(v['per_s'])} (p50 {v['p50_us']:,.0f} µs, p99 {v['p99_us']:,.0f} µs)",
                f"built-in: {fmt_rate(b['per_s'])}", fmt_ratio(v["per_s"] / b["per_s"]) if b["per_s"] else "—"),
        ]
        c = r.get("vault_concurrent")
        if c:
            rows.append(Row(f"`Server::sign` through Vault, {c['threads']} signers at once (CSR rate limit off)",
                            fmt_rate(c["per_s"]), f"one at a time: {fmt_rate(v['per_s'])}",
                            fmt_ratio(c["per_s"] / v["per_s"]) if v["per_s"] else "—"))
        note = (f"`CaManager::sign_leaf` one leaf at a time, {p['seconds_per_ca']:g} s per CA in {p['rounds']} "
                f"alternating rounds; then the server with several threads, where Vault's round trips overlap "
                f"(it signs without the CA lock). {p.get('openbao') or 'OpenBao'}.")
        return table(rows) + "\n\n" + note + "\n\n" + self.reproduce(j.get("command", CRITERION_CMD.format("ca_vault")))

    # -- authorize ----------------------------------------------------------------------------

    def authorize(self) -> Optional[str]:
        ids = [f for f, b in self.crit.bench.items() if b["group"] == "authorize"]
        self.claimed.update(ids)
        if not ids:
            return None
        sizes = sorted({self.crit.bench[f]["value"] for f in ids}, key=lambda v: int(v) if (v or "").isdigit() else 0)
        labels = {
            "matched": "matched (exact source)",
            "wildcard_fallthrough": "falls through to a `*` source",
            "shared_swappable": "through `SharedIntentionIndex` (lock-free swappable handle)",
        }
        rows = []
        for n in sizes:
            base = self.crit.median(f"authorize/matched/{n}")
            funcs = sorted(
                (self.crit.bench[f]["function"] for f in ids if self.crit.bench[f]["value"] == n),
                key=lambda f: (list(labels).index(f) if f in labels else 99, f),
            )
            for fn in funcs:
                v = self.crit.median(f"authorize/{fn}/{n}")
                if v is None:
                    continue
                at_target = n == AUTHORIZE_AT
                met = v <= AUTHORIZE_TARGET_NS if at_target else None
                count = f"{int(n):,}" if (n or "").isdigit() else n
                what = f"{count} intentions: {labels.get(fn, fn)}"
                is_base = fn == "matched"
                rows.append(Row(
                    what, fmt_time_ns(v),
                    "(baseline)" if is_base else "—" if base is None else f"matched: {fmt_time_ns(base)}",
                    "—" if is_base or base is None else fmt_ratio(v / base),
                    f"≤ {AUTHORIZE_TARGET_NS} ns" if at_target else "—", met,
                ))
                if at_target:
                    self.target(f"authorize in process, {count} intentions, {labels.get(fn, fn)}",
                                fmt_time_ns(v), f"≤ {AUTHORIZE_TARGET_NS} ns", met)
        return table(rows) + "\n\n" + self.reproduce(CRITERION_CMD.format("authorize"), medians=True)

    # -- HTTP ---------------------------------------------------------------------------------

    def http(self) -> Optional[str]:
        j = self.json["http_load"]
        if not j:
            return None
        a, w = j["results"]["authorize"], j["results"]["wake_blocked"]
        inproc = self.crit.median(f"authorize/matched/{AUTHORIZE_AT}")
        p50_ns = a["p50_us"] * 1e3
        rows = [
            Row(f"`POST /v1/agent/connect/authorize`, {a['connections']} keep-alive connections, {a['seconds']:.0f} s",
                fmt_rate(a["req_per_s"], " req/s"),
                f"in-process `authorize`, one core: {fmt_rate(1e9 / inproc)}" if inproc else "—",
                fmt_ratio(a["req_per_s"] / (1e9 / inproc)) if inproc else "—"),
            Row("the same, p50 latency", fmt_time_ns(p50_ns),
                f"in-process `authorize` ({int(AUTHORIZE_AT):,} intentions): {fmt_time_ns(inproc)}" if inproc else "—",
                fmt_ratio(p50_ns / inproc) if inproc else "—"),
            Row("the same, p99 latency", fmt_time_ns(a["p99_us"] * 1e3), "p50",
                fmt_ratio(a["p99_us"] / a["p50_us"])),
            Row(f"one intention change answering {w['waiters']:,} blocked `GET /v1/connect/intentions?index=…`",
                f"last answer after {fmt_time_ns(w['last_ms'] * 1e6)}"),
        ]
        return table(rows) + "\n\n" + self.reproduce(j.get("command", "make bench"))

    # -- agent --------------------------------------------------------------------------------

    def agent_section(self) -> Optional[str]:
        if not self.agent:
            return None
        L = self.agent
        rows = []
        used = set()

        def line(*needles: str) -> Optional[str]:
            for label, (_, full) in L.items():
                if all(n in label for n in needles):
                    used.add(label)
                    return full
            return None

        cache_get = duration_ns(find_line(L, "cache Get"))
        index10 = self.crit.median("authorize/matched/10")
        for needles, what, base_name, base in (
            (("warm leaf read",), "warm leaf read (the identity snapshot a handshake uses)",
             "the generic cache `Get`", cache_get),
            (("warm roots read",), "warm roots read (same snapshot)", "the generic cache `Get`", cache_get),
            (("authorize through the cached intentions",),
             "authorize through the cached intentions (the service's index)",
             "a bare index of 10 intentions", index10),
        ):
            v = duration_ns(line(*needles))
            if v is None:
                continue
            met = v <= WARM_TARGET_NS
            rows.append(Row(what, fmt_time_ns(v), f"{base_name}: {fmt_time_ns(base)}" if base else "—",
                            fmt_ratio(v / base) if base else "—", f"≤ {WARM_TARGET_NS} ns", met))
            self.target(what, fmt_time_ns(v), f"≤ {WARM_TARGET_NS} ns", met)
        if cache_get is not None:
            line("cache Get")
            rows.append(Row("`agent.roots()` through the generic cache `Get` (async, hash lookup, TTL touch), mean",
                            fmt_time_ns(cache_get), "(baseline)", "—", "— (not on the handshake path)"))
        v = duration_ns(line("cold start"))
        if v is not None:
            sign, csr = self.crit.median("ca/sign_leaf_p256"), self.crit.median("ca/leaf_key_and_csr_p256")
            base = sign + csr if sign and csr else None
            met = v < COLD_START_TARGET_NS
            rows.append(Row("cold start to first leaf: new agent over a running local server, key + CSR + sign",
                            fmt_time_ns(v), f"key + CSR + sign alone: {fmt_time_ns(base)}" if base else "—",
                            fmt_ratio(v / base) if base else "—", "< 50 ms", met))
            self.target("cold start to first leaf", fmt_time_ns(v), "< 50 ms", met)
        full = line("memory held per cached service")
        if full is None:
            full = line("cached leaves")
        v = kib(full)
        if v is not None:
            n = re.search(r"(\d[\d,_]*) cached", full or "")
            count = f", {int(re.sub('[,_]', '', n.group(1))):,} services" if n else ""
            met = v <= SERVICE_MEMORY_TARGET_KIB
            rows.append(Row(f"memory held per cached service (leaf chain, key, cache entry; roots shared){count}",
                            f"{v:.2f} KiB", target=f"≤ {SERVICE_MEMORY_TARGET_KIB:g} KiB", met=met))
            self.target("memory per cached service", f"{v:.2f} KiB", f"≤ {SERVICE_MEMORY_TARGET_KIB:g} KiB", met)
            self.service_kib = (v, met, count)
        full = line("root change")
        v = duration_ns(full)
        if v is not None:
            n = re.search(r"reaching (\d[\d,_]*)", full or "")
            count = f"{int(re.sub('[,_]', '', n.group(1))):,}" if n else "many"
            rows.append(Row(f"a root change reaching {count} watchers of the roots",
                            f"last one after {fmt_time_ns(v)}"))
        # Lines this script does not know yet: shown as printed.
        for label, (rest, _) in L.items():
            if label not in used and (DURATION.search(rest) or "KiB" in rest):
                rows.append(Row(label, rest))
        return table(rows) + "\n\n" + self.reproduce(CRITERION_CMD.format("agent_cache"))

    # -- mTLS ---------------------------------------------------------------------------------

    TLS_LABELS = {
        "mtls_full_handshake": "full mTLS handshake, repeat peers (TLS 1.3, X25519MLKEM768, no resumption)",
        "mtls_resumed_handshake": "resumed handshake",
        "mtls_bulk_1mib": "1 MiB of application data over an established session",
    }
    BASELINES = ("rustls", "bare_rustls", "bare", "plain_tcp", "tcp")

    def _paired_target(self, label: str, ours: str, theirs: str, ratio: Dict[str, Any], goal: float) -> Row:
        """The row of a stacks-in-turn figure, libconnect against rustls, which carries a target
        (recorded for the summary too)."""
        met = ratio["median"] >= goal
        self.target(f"{label}, libconnect vs rustls", fmt_ratio(ratio["median"], pct=True),
                    f"≥ {goal * 100:.0f} %", met)
        return Row(f"{label}: libconnect", ours, f"rustls: {theirs}", per_round(ratio),
                   f"≥ {goal * 100:.0f} % of rustls", met)

    def tls(self) -> Optional[str]:
        groups = self.crit.groups()
        chosen = [
            g for g in groups
            if g.startswith("mtls") or any(self.crit.bench[f]["function"] in self.BASELINES for f in groups[g])
        ]
        chosen = [g for g in chosen if g not in ("ca", "authorize")]
        if not chosen:
            return None
        known = list(self.TLS_LABELS)
        chosen.sort(key=lambda g: (known.index(g) if g in known else 99, g))
        rows = []
        paired = self.json["tls_loopback"]
        hs_paired = self.json["tls_handshakes"]
        for g in chosen:
            self.claimed.update(groups[g])
            targeted = g in known or any(k in g for k in ("handshake", "bulk", "throughput"))
            # With the stacks-in-turn measurements at hand, they carry these targets.
            if paired and g == "loopback_bulk_1mib":
                targeted = False
            if hs_paired and g in ("mtls_full_handshake", "mtls_resumed_handshake"):
                targeted = False
            if hs_paired and "bulk" in hs_paired["results"] and g == "mtls_bulk_1mib":
                targeted = False
            label = self.TLS_LABELS.get(g, g.replace("_", " "))
            # Members compare with the baseline of the same parameter (`group/function/value`).
            by_value: Dict[Optional[str], Dict[str, Dict[str, Any]]] = {}
            for f in groups[g]:
                b = self.crit.bench[f]
                by_value.setdefault(b["value"], {})[b["function"]] = b
            for value in sorted(by_value, key=lambda v: (v is not None, int(v) if (v or "").isdigit() else 0, v or "")):
                members = by_value[value]
                base_fn = next((b for b in self.BASELINES if b in members), None)
                base = members.get(base_fn) if base_fn else None
                for m in sorted(members, key=lambda m: (m != "libconnect", m == base_fn, m)):
                    b = members[m]
                    what = f"{label}{f' ({value})' if value else ''}: {m}"
                    shown = self._crit_value(b)
                    if base is None or m == base_fn:
                        rows.append(Row(what, shown, "—" if base is None else "(baseline)"))
                        continue
                    # As rates: the baseline's time over this one's, so 100 % means as fast.
                    r = base["median_ns"] / b["median_ns"]
                    is_target = targeted and m == "libconnect"
                    goal = CACHED_FULL_TARGET if g == "mtls_full_handshake" else TLS_TARGET
                    met = r >= goal if is_target else None
                    rows.append(Row(what, shown, f"{base_fn}: {self._crit_value(base)}",
                                    f"{fmt_ratio(r, pct=True)} of its rate",
                                    f"≥ {goal * 100:.0f} % of {base_fn}" if is_target else "—", met))
                    if is_target:
                        self.target(f"{label}{f' ({value})' if value else ''}, libconnect vs {base_fn}",
                                    fmt_ratio(r, pct=True), f"≥ {goal * 100:.0f} %", met)
        note = ""
        if hs_paired:
            r, p = hs_paired["results"], hs_paired["params"]
            for kind, goal, what in (("full", CACHED_FULL_TARGET, "full mTLS handshakes, repeat peers"),
                                     ("resumed", TLS_TARGET, "resumed handshakes")):
                if kind not in r:
                    continue
                x = r[kind]
                label = f"{what}, stacks in turn ({p['rounds']} rounds of {p['handshakes_per_round']})"
                rows.append(self._paired_target(label, fmt_rate(x["libconnect_per_s"]),
                                                fmt_rate(x["rustls_per_s"]), x["libconnect_vs_rustls"], goal))
            if "bulk" in r:
                x = r["bulk"]
                label = (f"1 MiB of application data over an established session, in memory, stacks in turn "
                         f"({p['rounds']} rounds of {p.get('bulk_mib_per_round', '?')} MiB)")
                rows.append(self._paired_target(label, f"{fmt_num(x['libconnect_mib_per_s'])} MiB/s",
                                                f"{fmt_num(x['rustls_mib_per_s'])} MiB/s",
                                                x["libconnect_vs_rustls"], TLS_TARGET))
            note += ("\n\nThe handshake rows with the stacks in turn: "
                     + self.reproduce(hs_paired.get("command", CRITERION_CMD.format("tls_handshake"))))
        if paired:
            r, p = paired["results"], paired["params"]
            lc, bare, tcp = (r[k]["median_mib_per_s"] for k in ("libconnect", "rustls", "tcp"))
            label = f"loopback bulk, stacks in turn ({p['rounds']} rounds of {p['mib_per_round']} MiB)"
            rows.append(self._paired_target(label, f"{fmt_num(lc)} MiB/s", f"{fmt_num(bare)} MiB/s",
                                            r["libconnect_vs_rustls"], TLS_TARGET))
            control = r.get("rustls_control_vs_rustls")
            if control:
                rows.append(Row(f"{label}: control, a second bare rustls connection",
                                f"{fmt_num(r['rustls_control']['median_mib_per_s'])} MiB/s",
                                f"rustls: {fmt_num(bare)} MiB/s", per_round(control)))
            rows.append(Row(f"{label}: tcp", f"{fmt_num(tcp)} MiB/s", f"rustls: {fmt_num(bare)} MiB/s",
                            fmt_ratio(tcp / bare, pct=True)))
            note += ("\n\nThe loopback bulk rows with the stacks in turn: "
                     + self.reproduce(paired.get("command", CRITERION_CMD.format("tls_handshake"))))
        return table(rows) + "\n\n" + self.reproduce(CRITERION_CMD.format("tls_handshake"), medians=True) + note

    def _crit_value(self, b: Dict[str, Any]) -> str:
        ns = b["median_ns"]
        tp = b.get("throughput") or {}
        if "Bytes" in tp or "BytesDecimal" in tp:
            nbytes = tp.get("Bytes") or tp.get("BytesDecimal")
            return f"{fmt_time_ns(ns)} = {fmt_num(nbytes / ns * 1e9 / (1 << 30))} GiB/s"
        if "Elements" in tp:
            return f"{fmt_time_ns(ns)} = {fmt_rate(tp['Elements'] * 1e9 / ns)}"
        return f"{fmt_time_ns(ns)} = {fmt_rate(1e9 / ns)}"

    # -- memory -------------------------------------------------------------------------------

    def memory(self) -> Optional[str]:
        j = self.json["conn_memory"]
        svc = getattr(self, "service_kib", None)
        if not j and not svc:
            return None
        rows = []
        if svc:
            v, met, count = svc
            rows.append(Row(f"per cached service (agent_cache{count})", f"{v:.2f} KiB",
                            target=f"≤ {SERVICE_MEMORY_TARGET_KIB:g} KiB", met=met))
        cmds = [CRITERION_CMD.format("agent_cache")]
        if j:
            p = j["params"]
            n, requested = p["connections"], p.get("requested", p["connections"])
            lc, bare = j["results"]["libconnect"], j["results"]["rustls"]
            held = f"{n:,} connections held"
            if n < requested:
                held += f" of {requested:,} asked: the open-file limit, {p.get('open_file_limit'):,}, fits no more"
            for key, what in (
                ("both_bytes", f"heap per established mTLS connection, both ends ({held})"),
                ("server_bytes", "… server end (libconnect: `Listener`, revocation tracking)"),
                ("client_bytes", "… client end (libconnect: `dial_addr`)"),
            ):
                ratio = lc[key] / bare[key] if bare[key] else None
                tgt, met = "—", None
                if key != "client_bytes" and ratio is not None:
                    tgt, met = f"≤ {HELD_HEAP_TARGET:.2f}×", ratio <= HELD_HEAP_TARGET
                    side = "both ends" if key == "both_bytes" else "the listener's end"
                    self.target(f"heap per held connection, {side}, vs bare tokio-rustls ({n:,} held)",
                                fmt_ratio(ratio), tgt, met)
                rows.append(Row(what, fmt_bytes(lc[key]), f"bare tokio-rustls: {fmt_bytes(bare[key])}",
                                fmt_ratio(ratio) if ratio is not None else "—", tgt, met))
            def resumed(x: Dict[str, Any]) -> str:
                return f" ({x['resumed'] * 100:.0f} % resumed)" if "resumed" in x else ""

            if "accepts_per_s" in lc:
                shape = ("listener and clients in two processes" if "processes" in p
                         else "both ends in one process")
                rows.append(Row(f"connections opened per second ({p.get('in_flight', 64)} handshakes in flight, "
                                f"{shape})", fmt_rate(lc["accepts_per_s"]) + resumed(lc),
                                f"bare tokio-rustls: {fmt_rate(bare['accepts_per_s'])}{resumed(bare)}",
                                fmt_ratio(lc["accepts_per_s"] / bare["accepts_per_s"], pct=True)))
            self.target(f"{HELD_CONNECTIONS:,} connections held by one listener", f"{n:,}",
                        f"{HELD_CONNECTIONS:,}", n >= HELD_CONNECTIONS)
            rows.append(Row("cross-check: resident set per connection, both ends",
                            f"{fmt_num(lc['rss_kib'])} KiB", f"bare tokio-rustls: {fmt_num(bare['rss_kib'])} KiB",
                            fmt_ratio(lc["rss_kib"] / bare["rss_kib"]) if bare["rss_kib"] else "—"))
            if "server_rss_kib" in lc and "server_rss_kib" in bare:
                rows.append(Row("… the listener's process",
                                f"{fmt_num(lc['server_rss_kib'])} KiB",
                                f"bare tokio-rustls: {fmt_num(bare['server_rss_kib'])} KiB",
                                fmt_ratio(lc["server_rss_kib"] / bare["server_rss_kib"])
                                if bare["server_rss_kib"] else "—"))
            rows.append(Row("heap still held after closing them all (kept capacity), per connection",
                            fmt_bytes(lc["leftover_bytes"]), f"bare tokio-rustls: {fmt_bytes(bare['leftover_bytes'])}"))
            cmds.append(j.get("command", CRITERION_CMD.format("conn_memory")))
        return table(rows) + "\n\n" + self.reproduce(*cmds)

    # -- proxy --------------------------------------------------------------------------------

    def proxy(self) -> Optional[str]:
        j = self.json["proxy_latency"]
        if not j:
            return None
        r, p = j["results"], j["params"]
        versions = p.get("versions", {})
        names = {
            "plain_tcp": "plain TCP, no TLS (the floor)",
            "native": "libconnect in the application",
            "sidecar": "sidecar: `connect-proxy` (the sidecar build) on both sides",
            "all_in_one": "sidecar: `connect proxy` (the all-in-one `connect`) on both sides",
            "stunnel": f"sidecar: stunnel {versions.get('stunnel', '')} on both sides".replace("  ", " "),
            "haproxy": f"sidecar: HAProxy {versions.get('haproxy', '')} on both sides".replace("  ", " "),
        }
        short = {"plain_tcp": "plain TCP", "native": "libconnect in the application",
                 "sidecar": "`connect-proxy`", "all_in_one": "`connect proxy`",
                 "stunnel": "stunnel", "haproxy": "HAProxy"}
        # The other sidecars are read against `connect-proxy`, the question users ask; the
        # all-in-one `connect proxy` too, to show what the sidecar build saves.
        base_of = {"native": "plain_tcp", "sidecar": "native", "all_in_one": "sidecar",
                   "stunnel": "sidecar", "haproxy": "sidecar"}
        paths = [path for path in names if path in r]

        def against(label: str, get: Callable[[str], Optional[float]], fmt: Callable[[float], str],
                    only: Optional[List[str]] = None, base: Optional[Dict[str, str]] = None) -> List[Row]:
            out = []
            for path in only or paths:
                if path not in r or get(path) is None:
                    continue
                v, b = get(path), (base or base_of).get(path)
                bv = get(b) if b in r else None
                out.append(Row(f"{label}: {names[path]}", fmt(v),
                               f"{short[b]}: {fmt(bv)}" if bv else "(baseline)",
                               fmt_ratio(v / bv) if bv else "—"))
            return out

        rows = []
        for kind, label in (("established", f"{p['message_bytes']}-byte echo, established connection"),
                            ("new_connection", "new connection + first echo")):
            for q in ("p50_us", "p99_us"):
                rows += against(f"{label}, {q[:3]}", lambda path: r[path][kind][q], lambda v: fmt_time_ns(v * 1e3))
        rows += against("new connections per second, one at a time (connect + first echo)",
                        lambda path: r[path]["new_connection"].get("per_second"), fmt_rate)
        rows += against(f"bulk echo over one connection ({p.get('bulk_mib', '?')} MiB each way)",
                        lambda path: r[path].get("bulk_mib_per_s"), lambda v: fmt_rate(v, " MiB/s"))

        def rss(path: str) -> Optional[float]:
            k = r[path].get("rss_kib")
            return k["inbound"] + k["outbound"] if k else None

        def private(path: str) -> Optional[float]:
            k = r[path].get("private_kib")
            return k["inbound"] + k["outbound"] if k else None

        rows += against("resident set of both proxies after the run (inbound + outbound)", rss,
                        lambda v: f"{fmt_num(v)} KiB")
        rows += against("… of which private to them (what stopping both would free; no shared file pages)",
                        private, lambda v: f"{fmt_num(v)} KiB")
        for q in ("p50_us", "p99_us"):
            e = {path: r[path]["established"][q] for path in paths}
            if "sidecar" in e and "native" in e:
                rows.append(Row(f"added per request by the sidecar hop over libconnect in the application, {q[:3]}",
                                f"{e['sidecar'] - e['native']:+.1f} µs", "libconnect in the application",
                                fmt_ratio(e["sidecar"] / e["native"])))
            if "native" in e and "plain_tcp" in e:
                rows.append(Row(f"added per request by libconnect's mTLS over plain TCP, {q[:3]}",
                                f"{e['native'] - e['plain_tcp']:+.1f} µs", "plain TCP",
                                fmt_ratio(e["native"] / e["plain_tcp"])))
        # The issue's targets: `connect proxy`'s added latency (over plain TCP) and resident set
        # no worse than each other sidecar's.
        for other in ("stunnel", "haproxy"):
            if other not in r or "sidecar" not in r:
                continue
            if "plain_tcp" in r:
                floor = r["plain_tcp"]["established"]["p50_us"]
                ours, theirs = (r[x]["established"]["p50_us"] - floor for x in ("sidecar", other))
                met = ours <= theirs
                what = f"latency `connect-proxy` adds over plain TCP vs {short[other]}'s, p50"
                rows.append(Row(what, f"{ours:+.1f} µs", f"{short[other]}: {theirs:+.1f} µs",
                                fmt_ratio(ours / theirs) if theirs > 0 else "—", "≤ 1×", met))
                self.target(what, f"{ours:+.1f} µs vs {theirs:+.1f} µs", "≤ 1×", met)
            for measure, kind in ((rss, "resident set"), (private, "private memory")):
                ours, theirs = measure("sidecar"), measure(other)
                if ours and theirs:
                    met = ours <= theirs
                    what = f"{kind} of `connect-proxy` (both sides) vs {short[other]}'s"
                    rows.append(Row(what, f"{fmt_num(ours)} KiB", f"{short[other]}: {fmt_num(theirs)} KiB",
                                    fmt_ratio(ours / theirs), "≤ 1×", met))
                    self.target(what, f"{fmt_num(ours)} KiB vs {fmt_num(theirs)} KiB", "≤ 1×", met)
        note = (f"{p['requests_per_path']:,} requests per path ({p['rounds']} rounds, paths in turn); "
                f"{p['new_connections_per_path']:,} new connections per path")
        if "bulk_rounds" in p:
            note += f"; bulk: median of {p['bulk_rounds']} rounds, a new connection each"
        note += "."
        for tool, why in p.get("skipped", {}).items():
            note += f" **{short.get(tool, tool)} was skipped**: {why}."
        return table(rows) + "\n\n" + note + "\n\n" + self.reproduce(j.get("command", CRITERION_CMD.format("proxy_latency")))

    # -- bindings -----------------------------------------------------------------------------

    def ffi(self) -> Optional[str]:
        j = self.json["ffi"]
        if not j:
            return None
        rust, c = j["results"]["rust"], j["results"]["c"]
        n, mib = j["params"]["handshakes"], j["params"]["mib"]
        rows = []
        for key, what, unit in (("handshakes_per_s", f"C API: {n:,} dial + 1-byte echo", " handshakes/s"),
                                ("mib_per_s", f"C API: {mib} MiB echoed in 64 KiB round trips", " MiB/s")):
            r = c[key] / rust[key] if rust[key] else None
            met = r >= FFI_TARGET if r is not None else None
            rows.append(Row(what, fmt_rate(c[key], unit), f"Rust API: {fmt_rate(rust[key], unit)}",
                            fmt_ratio(r, pct=True), f"≥ {FFI_TARGET * 100:.0f} % of Rust", met))
            self.target(f"C API vs Rust API, {unit.strip()}", fmt_ratio(r, pct=True),
                        f"≥ {FFI_TARGET * 100:.0f} %", met)
        hold = j["results"].get("c_hold")
        if hold:
            n, asked = hold["held"], hold["requested"]
            held = f"{n:,} held" + (f" of {asked:,} asked (open-file limit)" if n < asked else "")
            # The Rust harness's figures for the same shape (listener and clients in two
            # processes, both ends counted, 64 in flight).
            mem = (self.json["conn_memory"] or {}).get("results", {})
            bare, lc = mem.get("rustls"), mem.get("libconnect")
            rows.append(Row(f"C API listener: connections held at once, resident set per connection, both ends ({held})",
                            f"{fmt_num(hold['rss_kib_per_conn'])} KiB",
                            f"bare tokio-rustls (Rust harness): {fmt_num(bare['rss_kib'])} KiB" if bare else "—",
                            fmt_ratio(hold["rss_kib_per_conn"] / bare["rss_kib"]) if bare and bare["rss_kib"] else "—"))
            if "server_rss_kib_per_conn" in hold:
                rows.append(Row("… the listener's process",
                                f"{fmt_num(hold['server_rss_kib_per_conn'])} KiB",
                                f"bare tokio-rustls (Rust harness): {fmt_num(bare['server_rss_kib'])} KiB"
                                if bare and "server_rss_kib" in bare else "—",
                                fmt_ratio(hold["server_rss_kib_per_conn"] / bare["server_rss_kib"])
                                if bare and bare.get("server_rss_kib") else "—"))
            rows.append(Row("… connections opened per second (64 dialing threads, one accepting thread)",
                            fmt_rate(hold["accepts_per_s"]),
                            f"libconnect Rust API (Rust harness): {fmt_rate(lc['accepts_per_s'])}"
                            if lc and "accepts_per_s" in lc else "—",
                            fmt_ratio(hold["accepts_per_s"] / lc["accepts_per_s"], pct=True)
                            if lc and lc.get("accepts_per_s") else "—"))
        return table(rows) + "\n\n" + self.reproduce(j.get("command", "make bench-ffi"))

    def python(self) -> Optional[str]:
        j = self.json["python"]
        if not j:
            return None
        f, n, mib = j["results"], j["params"]["handshakes"], j["params"]["mib"]
        hs = f["libconnect_handshakes_per_s"]
        rows = [
            Row(f"Python libconnect: {n:,} handshakes ({f.get('libconnect_resumed', '?')} resumed)",
                fmt_rate(hs, " handshakes/s"), f"Python `ssl`, full: {fmt_rate(f['ssl_full_handshakes_per_s'])}",
                fmt_ratio(hs / f["ssl_full_handshakes_per_s"], pct=True)),
            Row("… the same", fmt_rate(hs, " handshakes/s"),
                f"Python `ssl`, session reuse: {fmt_rate(f['ssl_resumed_handshakes_per_s'])}",
                fmt_ratio(hs / f["ssl_resumed_handshakes_per_s"], pct=True)),
            Row(f"Python libconnect: {mib} MiB, 64 KiB sends", fmt_rate(f["libconnect_mib_per_s"], " MiB/s"),
                f"Python `ssl`: {fmt_rate(f['ssl_mib_per_s'], ' MiB/s')}",
                fmt_ratio(f["libconnect_mib_per_s"] / f["ssl_mib_per_s"], pct=True)),
        ]
        versions = j["params"]
        note = f"Python {versions.get('python', '?')}, {versions.get('openssl', '?')}."
        return table(rows) + "\n\n" + note + " " + self.reproduce(j.get("command", "make bench-python"))

    def node(self) -> Optional[str]:
        j = self.json["node"]
        if not j:
            return None
        f, n, mib = j["results"], j["params"]["handshakes"], j["params"]["mib"]
        lc = f["libconnect"]
        # Plain Node `tls` twice: PEM options per tls.connect (a SecureContext per connection),
        # and one SecureContext shared by every dial. The target is against the faster of them.
        bases = [(k, label) for k, label in (("node_tls", "Node `tls`, PEM options per connection"),
                                              ("node_tls_shared_context", "Node `tls`, one shared SecureContext"))
                 if k in f]
        def paired_ratio(a: Dict[str, Any], b: Dict[str, Any], key: str) -> float:
            # The median of the per-round ratios: the paths ran side by side within a round.
            xs, ys = (a.get("rounds") or {}).get(key), (b.get("rounds") or {}).get(key)
            if not xs or not ys or len(xs) != len(ys):
                return a[key] / b[key]
            return statistics.median(x / y for x, y in zip(xs, ys))

        rows = []
        for key, what, unit in (("handshakes_per_s", f"Node libconnect: {n:,} sequential handshakes", " handshakes/s"),
                                ("mib_per_s", f"Node libconnect: {mib} MiB", " MiB/s")):
            best = max(f[k][key] for k, _ in bases)
            for k, label in bases:
                r = paired_ratio(lc, f[k], key)
                is_best = f[k][key] == best
                met = r >= NODE_TARGET if is_best else None
                rows.append(Row(what, fmt_rate(lc[key], unit), f"{label}: {fmt_rate(f[k][key], unit)}",
                                fmt_ratio(r, pct=True), f"≥ {NODE_TARGET * 100:.0f} % of the faster" if is_best else "—",
                                met))
                if is_best:
                    self.target(f"Node libconnect vs Node `tls` (the faster variant), {unit.strip()}",
                                fmt_ratio(r, pct=True), f"≥ {NODE_TARGET * 100:.0f} %", met)
                what = "… the same"
        control = f.get("node_tls_shared_context_control")
        if control and "node_tls_shared_context" in f:
            base = f["node_tls_shared_context"]
            for key, what, unit in (("handshakes_per_s", "control: the shared-SecureContext path measured twice, "
                                     "handshakes", " handshakes/s"),
                                    ("mib_per_s", "control: the same, throughput", " MiB/s")):
                rows.append(Row(what, fmt_rate(control[key], unit), f"its first measurement: {fmt_rate(base[key], unit)}",
                                fmt_ratio(paired_ratio(control, base, key), pct=True)))
        rounds = j["params"].get("rounds")
        note = f"Node {j['params'].get('node', '?')}." + (
            f" Medians of {rounds} rounds, the paths in turn, each round starting with the next path;"
            " ratios are the median of the per-round ratios." if rounds else "")
        return table(rows) + "\n\n" + note + " " + self.reproduce(j.get("command", "make bench-node"))

    # -- everything else ----------------------------------------------------------------------

    def other(self) -> Optional[str]:
        rest = [f for f in self.crit.bench if f not in self.claimed]
        if not rest:
            return None
        rows = [Row(f"`{f}`", self._crit_value(self.crit.bench[f])) for f in sorted(rest)]
        # The heading is generated too, so that nothing shows while every group is described.
        return ("## Other criterion benchmarks\n\nBenchmarks without a description in "
                "scripts/bench-report.py yet.\n\n" + table(rows))

    def summary(self) -> Optional[str]:
        """The targets this run measured; `render` adds the earlier rows of tables it kept."""
        if not self.targets:
            return None
        return table(self.summary_rows(), SUMMARY_HEADER)

    def summary_rows(self) -> List[List[str]]:
        return [[section, t.what, t.value, t.target, "—" if t.met is None else ("met" if t.met else "**not met**")]
                for section, t in self.targets]

    def machine(self, kept: List[str]) -> str:
        m = machine()
        g = git_state()
        started = self.run.get("started", "?")
        rows = [
            ["CPU", f"{m['cpu']}, {m['cores']} logical CPUs"],
            ["memory", m["memory"]],
            ["OS, kernel", f"{m['os']}, {m['kernel']}"],
            ["rustc", m["rustc"]],
            ["git commit", f"{self.run.get('commit', g['commit'])} ({self.run.get('branch', g['branch'])})"],
            ["run", f"{started} → {now()}"],
            ["load average at start / end", f"{self.run.get('loadavg', '?')} / {loadavg()}"],
        ]
        text = table(rows, ["machine", ""])
        if self.quick:
            text = ("**QUICK MODE — NOT REPRESENTATIVE.** These figures come from `make bench-quick` (short "
                    "measurement times, few iterations); they check that the harnesses work, nothing more.\n\n"
                    + text)
        if kept:
            text += ("\n\nNot regenerated by this run (their tables are from an earlier run): "
                     + ", ".join(kept) + ".")
        return text


# The blocks in the order they are generated: the summary and the memory table need what the
# other sections found, and the "other" table what they did not claim.
SECTIONS: List[Tuple[str, str, Callable[[Report], Optional[str]]]] = [
    ("ca", "CA signing", Report.ca),
    ("ca_vault", "CA signing through Vault", Report.ca_vault),
    ("authorize", "authorize in process", Report.authorize),
    ("http", "control plane over HTTP", Report.http),
    ("agent", "agent", Report.agent_section),
    ("tls", "mTLS vs bare rustls", Report.tls),
    ("memory", "memory", Report.memory),
    ("proxy", "added latency vs a sidecar", Report.proxy),
    ("ffi", "C API vs Rust API", Report.ffi),
    ("python", "Python vs ssl", Report.python),
    ("node", "Node vs tls", Report.node),
    ("other", "other criterion benchmarks", Report.other),
    ("summary", "targets", Report.summary),
]

SUMMARY_HEADER = ["table", "target from the issues", "measured", "target", "met"]


def kept_summary_rows(doc: str, kept: List[str]) -> Dict[str, List[List[str]]]:
    """The rows of the document's summary that belong to tables this run kept, by table."""
    rows: Dict[str, List[List[str]]] = {}
    m = re.search(r"<!-- bench:table:summary -->\n(.*?)<!-- /bench:table:summary -->", doc, re.S)
    if not m:
        return rows
    for line in m.group(1).splitlines()[2:]:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == len(SUMMARY_HEADER) and cells[0] in kept:
            rows.setdefault(cells[0], []).append(cells)
    return rows


MARKER = re.compile(r"(<!-- bench:table:(\w+) -->\n)(.*?)(<!-- /bench:table:\2 -->)", re.S)


def render(doc: str, report: Report) -> Tuple[str, List[str]]:
    blocks: Dict[str, Optional[str]] = {}
    for name, title, fn in SECTIONS:
        report.section = title
        blocks[name] = fn(report)
    present = {m.group(2) for m in MARKER.finditer(doc)}
    kept = [title for name, title, _ in SECTIONS if blocks[name] is None and name in present and name != "other"]
    missing = [name for name, _, _ in SECTIONS if blocks[name] is not None and name not in present]
    blocks["machine"] = report.machine(kept)
    if kept:
        # A table kept from an earlier run keeps its rows in the summary too, in table order.
        old = kept_summary_rows(doc, kept)
        new = report.summary_rows()
        rows: List[List[str]] = []
        for _, title, _ in SECTIONS:
            rows += old.get(title, []) + [r for r in new if r[0] == title]
        blocks["summary"] = table(rows, SUMMARY_HEADER) if rows else blocks["summary"]

    def sub(m: "re.Match[str]") -> str:
        body = blocks.get(m.group(2))
        if body is None:
            return m.group(0)
        return m.group(1) + body.rstrip() + "\n" + m.group(4)

    out = MARKER.sub(sub, doc)
    report.blocks = blocks
    for name in missing:
        print(f"bench-report: no <!-- bench:table:{name} --> marker in the document; that table is left out",
              file=sys.stderr)
    return out, kept


def apply_blocks(doc: str, blocks: Dict[str, Optional[str]]) -> str:
    """Puts the blocks one render made into another document's markers (the README's)."""

    def sub(m: "re.Match[str]") -> str:
        body = blocks.get(m.group(2))
        if body is None:
            return m.group(0)
        return m.group(1) + body.rstrip() + "\n" + m.group(4)

    return MARKER.sub(sub, doc)


def default_out() -> Path:
    if os.environ.get("BENCH_OUT"):
        return Path(os.environ["BENCH_OUT"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return Path(target) / "bench"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="results directory (default $BENCH_OUT or <target>/bench)")
    ap.add_argument("--start", action="store_true", help="record the run's start (date, commit, load) and exit")
    ap.add_argument("--quick", action="store_true", help="with --start: this run is a quick one")
    ap.add_argument("--input", type=Path, default=ROOT / "BENCHMARKS.md", help="document to rewrite")
    ap.add_argument("--write", type=Path, help="write the result here instead of printing it")
    ap.add_argument("--readme", type=Path,
                    help="with --write: also rewrite this document's bench:table markers (README.md)")
    ap.add_argument("--allow-quick", action="store_true",
                    help="let quick-mode results overwrite the input document")
    args = ap.parse_args()
    out = args.out or default_out()

    if args.start:
        out.mkdir(parents=True, exist_ok=True)
        g = git_state()
        (out / "run.json").write_text(json.dumps({
            "started": now(), "commit": g["commit"], "branch": g["branch"],
            "loadavg": loadavg(), "quick": args.quick,
        }, indent=2))
        return 0

    report = Report(out)
    doc = args.input.read_text()
    text, kept = render(doc, report)
    if len(kept) == len([name for name, _, _ in SECTIONS if name != "other"]):
        # Rewriting only the machine table would put this machine under old figures.
        print(f"bench-report: no results in {out}; run make bench first", file=sys.stderr)
        return 1
    if kept:
        print("bench-report: kept from an earlier run (no results in " + str(out) + "): " + ", ".join(kept),
              file=sys.stderr)
    if args.write:
        if report.quick and args.write.resolve() == args.input.resolve() and not args.allow_quick:
            print("bench-report: refusing to write quick-mode figures into " + str(args.input)
                  + " (use make bench for real ones, or --allow-quick)", file=sys.stderr)
            return 1
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
        print(f"bench-report: wrote {args.write}", file=sys.stderr)
        if args.readme:
            args.readme.write_text(apply_blocks(args.readme.read_text(), report.blocks))
            print(f"bench-report: wrote {args.readme}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
