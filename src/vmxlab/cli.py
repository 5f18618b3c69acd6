"""Command line: argparse front end over the library (no logic the library lacks).

Exit status: 0 success; 1 the VMCS or run failed; 2 bad input or usage, with one
line naming the file, field or value.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import BadInput


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        raise BadInput(f"{text!r} is not a number") from None


# ---- decode ---------------------------------------------------------------------
def _decode_field(args) -> int:
    from .arch import fields as F
    if args.list:
        for f in F.FIELDS:
            print(f"{f.encoding:#06x}  {f.name:<32} {f.width:<8} {f.type}")
        return 0
    if not args.what:
        raise BadInput("decode field needs a NAME or ENCODING (or --list)")
    key = args.what
    try:
        enc = int(key, 0)
    except ValueError:
        enc = None
    if enc is not None:
        d = F.decode_encoding(enc)
        field = F.BY_ENCODING.get(enc & ~1)
        if field is None or d.reserved_bits or (d.access == "high" and field.width != "64"):
            raise BadInput(f"unknown VMCS field {enc:#x} (encoding bits say: {d.width}-width, "
                           f"{d.type}, index {d.index}, {d.access} access)")
        access = d.access
    else:
        field = F.lookup(key)
        if field is None:
            raise BadInput(f"unknown VMCS field {key!r}")
        access = "full"
    width = "natural width" if field.width == "natural" else f"{field.width}-bit"
    print(f"{field.name}{' (HIGH access: bits 63:32)' if access == 'high' else ''}")
    print(f"  encoding  {field.encoding:#06x}{f' (high {field.encoding | 1:#06x})' if field.width == '64' else ''}")
    print(f"  width     {width}")
    print(f"  type      {field.type}{' (VM-exit information)' if field.type == 'read-only' else ''}")
    print(f"  index     {field.index}")
    print(f"  access    {access}")
    print(f"  SDM name  {field.sdm}")
    if field.aliases:
        print(f"  aliases   {', '.join(field.aliases)}")
    if field.requires:
        print(f"  exists with {' or '.join(field.requires)}")
    return 0


def _decode_exit(args) -> int:
    from .arch import exits as X
    value = _int(args.what)
    if not 0 <= value <= 0xFFFFFFFF:
        raise BadInput(f"exit reason {value:#x} is wider than 32 bits")
    r = X.lookup(value)
    if r is None:
        raise BadInput(f"exit reason {value & 0xFFFF} is not in the SDM's table of basic exit reasons")
    flags = [name for name, v in X.EXIT_REASON.decode(value).items() if name != "basic" and v]
    print(f"{r.number} {r.name}: {r.sdm}")
    if flags:
        print(f"  flags: {', '.join(flags)}")
    return 0


def _decode_error(args) -> int:
    from .arch import instruction_errors as E
    e = E.lookup(args.what)
    if e is None:
        raise BadInput(f"unknown VM-instruction error {args.what!r} (1-28)")
    print(f"{e.number} {e.name}: {e.meaning}")
    return 0


def _decode_ar(args) -> int:
    from .arch import segments as S
    value = _int(args.what)
    if not 0 <= value <= 0xFFFFFFFF:
        raise BadInput(f"access rights {value:#x} are wider than 32 bits")
    print(f"{value:#07x}: {S.describe_ar(value)}")
    for name, meaning in S.AR.describe(value):
        print(f"  {name:<16} {meaning}")
    return 0


def _decode_controls(args) -> int:
    from .arch import controls as C
    from .arch import fields as F
    field = F.lookup(args.what)
    if field is None or field.name not in C.CONTROL_FIELDS:
        raise BadInput(f"{args.what!r} is not a control field ({', '.join(C.CONTROL_FIELDS)})")
    if args.value is None:
        raise BadInput("decode controls needs FIELD VALUE")
    value = _int(args.value)
    cf = C.CONTROL_FIELDS[field.name]
    if not 0 <= value < 1 << cf.bits:
        raise BadInput(f"{field.name}: value {value:#x} is wider than {cf.bits} bits")
    print(f"{field.name} = {value:#x}")
    for n in C.names_of(field.name, value):
        print(f"  {n}")
    if args.cpu:
        from .caps import load
        p = load(args.cpu)
        must1, may1, msr = p.allowed(field.name)
        bad1 = value & ~may1
        bad0 = must1 & ~value
        print(f"against {p.name} ({msr}):")
        if bad1:
            print(f"  set but not allowed (allowed-1 is 0): {', '.join(C.names_of(field.name, bad1))}")
        if bad0:
            print(f"  clear but required (allowed-0 is 1): {', '.join(C.names_of(field.name, bad0))}")
        if not bad0 and not bad1:
            print("  every bit allowed")
        return 1 if bad0 or bad1 else 0
    return 0


def _decode_qualification(args) -> int:
    from .arch import exits as X
    r = X.lookup(args.what)
    if r is None:
        raise BadInput(f"unknown exit reason {args.what!r}")
    if args.value is None:
        raise BadInput("decode qualification needs REASON VALUE")
    value = _int(args.value)
    if not 0 <= value < 1 << 64:
        raise BadInput(f"qualification {value:#x} is wider than 64 bits")
    layout = X.QUALIFICATIONS.get(r.number)
    print(f"{r.name} qualification {value:#x}")
    if layout is None:
        print("  (the SDM defines no qualification layout for this exit reason: value is 0 or reserved)")
        return 0
    if r.number == 0:
        print("  (for #DB; for #PF it is the linear address (CR2), otherwise 0)")
    for name, meaning in layout.describe(value):
        print(f"  {name:<20} {meaning}")
    return 0


# ---- caps, demo ---------------------------------------------------------------------
def _read_live_msrs() -> dict[int, int]:
    from .arch import msrs as M
    path = "/dev/cpu/0/msr"
    if not os.path.exists(path):
        raise BadInput(f"{path} does not exist here (no msr driver: try 'modprobe msr' as root)")
    out = {}
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BadInput(f"{path}: cannot open ({e.strerror})") from None
    try:
        for m in M.VMX_CAPABILITY_MSRS:
            try:
                out[m.index] = int.from_bytes(os.pread(fd, 8, m.index), "little")
            except OSError:
                pass
    finally:
        os.close(fd)
    if M.IA32_VMX_BASIC not in out:
        raise BadInput(f"{path}: IA32_VMX_BASIC cannot be read (this processor has no VMX)")
    return out


def _cmd_caps(args) -> int:
    from .caps import load
    from .caps.describe import describe_profile
    from .caps.profile import Profile, shipped
    if args.live:
        from .caps.profile import from_dict
        msrs = _read_live_msrs()
        profile = from_dict({"name": "live", "msrs": {hex(k): hex(v) for k, v in msrs.items()}}, "live")
    elif args.list:
        for name in shipped():
            p = load(name)
            print(f"{name:<18} {p.description}")
        return 0
    else:
        profile = load(args.profile)
    assert isinstance(profile, Profile)
    print("\n".join(describe_profile(profile)))
    return 0


def _cmd_demo(args) -> int:
    import json
    from .hypervisor import report
    from .hypervisor.bluepill import run_demo
    r = run_demo(args.cpu, literal=args.seed_literal, trace=args.trace)
    if args.json:
        print(json.dumps(report.document(r), indent=2))
    else:
        print(report.text(r, trace=args.trace), end="")
    if args.seed_literal:
        return 0 if r.outcome in ("VMLAUNCH failed", "driver crashed") else 1
    return 0 if r.outcome.startswith("devirtualized") else 1


def _cmd_run(args) -> int:
    import json
    from .hypervisor import image, runreport
    from .hypervisor.run import parse_edit, run_image
    if (args.image is None) == (args.builtin is None):
        raise BadInput("run needs an IMAGE file or --builtin NAME (one of them)")
    img = image.builtin(args.builtin) if args.builtin else image.read(args.image)
    edits = [parse_edit(op, text) for op, text in args.edits or ()]
    r = run_image(img, backend=args.backend, cpu_profile=args.cpu, edits=edits, trace=args.trace,
                  max_exits=args.max_exits, timeout=args.timeout)
    if args.json:
        print(json.dumps(runreport.document(r), indent=2))
    else:
        print(runreport.text(r, trace=args.trace), end="")
    return 0 if r.ok else 1


class _Edit(argparse.Action):
    """--set/--or/--andnot FIELD=VALUE, kept in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        edits = list(getattr(namespace, self.dest) or ())
        edits.append((option_string.lstrip("-"), values))
        setattr(namespace, self.dest, edits)


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _read_input(path: str) -> tuple[str, str]:
    if path == "-":
        try:
            return sys.stdin.read(), "-"
        except UnicodeDecodeError:
            raise BadInput("-: standard input is not UTF-8 text") from None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(), path
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read ({getattr(e, 'strerror', None) or e.__class__.__name__})") from None


def _cmd_check(args) -> int:
    import json
    from .caps import load
    from .checks import check
    from .vmcs.document import load as load_document
    text, name = _read_input(args.file)
    doc = load_document(text, name)
    profile = load(args.cpu or doc.cpu)
    result = check(doc.vmcs, profile, doc.read_memory, instruction=args.instruction, all=args.all,
                   host_lma=args.host_mode == "64bit")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"{name}: {doc.source} on {profile.name}, {args.instruction.upper()}")
        print("\n".join(result.lines()))
    return 0 if result.ok else 1


def _cmd_template(args) -> int:
    from .caps import load
    from .checks.template import build
    from .vmcs import jsonfmt
    profile = load(args.cpu)
    doc = build(profile, args.mode)
    doc.cpu = args.cpu or profile.name
    sys.stdout.write(jsonfmt.dumps(doc))
    return 0


def _cmd_rules(args) -> int:
    from . import checks  # noqa: F401  (registers the rules)
    from .checks.catalogue import lines
    print("\n".join(lines()))
    return 0


def _cmd_diff(args) -> int:
    import json
    from .kvm import differential
    cpls = differential.parse_cpls(args.cpl)
    report = differential.run(args.count, args.seed, cpls, shrink_divergences=not args.no_shrink)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(differential.report_text(report))
    return 0 if report.tally()["diverge"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="vmxlab", description="Intel VT-x (VMX) toolkit: SDM tables, VMCS, "
                 "VM-entry checks, simulated VMX processor.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="the main job: the seed's hypervisor blue-pills the built-in kernel")
    d.add_argument("--cpu", metavar="PROFILE", help="capability profile (name or JSON file)")
    d.add_argument("--seed-literal", action="store_true", help="replay the seed exactly as written, mistakes included")
    d.add_argument("--trace", action="store_true", help="every VM exit as a kvm_exit line")
    d.add_argument("--json", action="store_true", help="one JSON document")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("caps", help="decoded capabilities of a profile, per control bit")
    c.add_argument("profile", nargs="?", metavar="PROFILE|FILE")
    c.add_argument("--live", action="store_true", help="read this processor's MSRs (/dev/cpu/0/msr)")
    c.add_argument("--list", action="store_true", help="list the shipped profiles")
    c.set_defaults(func=_cmd_caps)

    ck = sub.add_parser("check", help="the VM-entry checks on a VMCS (vmxlab JSON or dump_vmcs text)")
    ck.add_argument("file", metavar="FILE|-")
    ck.add_argument("--cpu", metavar="PROFILE", help="capability profile (default: the document's, else "
                    "the default profile)")
    ck.add_argument("--instruction", choices=("vmlaunch", "vmresume"), default="vmlaunch")
    ck.add_argument("--all", action="store_true", help="evaluate every rule and list every violation")
    ck.add_argument("--json", action="store_true", help="the result as JSON")
    ck.add_argument("--host-mode", choices=("64bit", "32bit"), default="64bit",
                    help="mode of the processor executing VMLAUNCH/VMRESUME (IA32_EFER.LMA)")
    ck.set_defaults(func=_cmd_check)

    t = sub.add_parser("template", help="a VMCS that passes every VM-entry check (vmxlab JSON)")
    t.add_argument("--cpu", metavar="PROFILE", help="capability profile (name or JSON file)")
    t.add_argument("--mode", choices=("long", "compat", "protected", "unrestricted-real"), default="long")
    t.set_defaults(func=_cmd_template)

    r = sub.add_parser("run", help="a guest image (flat 64-bit binary or ELF64) under the Python hypervisor",
                       description="Run IMAGE as the built-in kernel's workload, virtualized by the seed's "
                       "hypervisor (docs/run.md: load address, ELF rules, outcomes, JSON).")
    r.add_argument("image", nargs="?", metavar="IMAGE", help="flat binary (loaded at 0x1000000) or ELF64 executable")
    r.add_argument("--builtin", metavar="NAME", help="a built-in image instead of a file (hello, bluepill)")
    r.add_argument("--backend", choices=("sim", "kvm"), default="sim",
                   help="sim: the simulated processor (default); kvm: /dev/kvm after VM entry")
    r.add_argument("--cpu", metavar="PROFILE", help="capability profile (name or JSON file)")
    r.add_argument("--trace", action="store_true", help="every VM exit as a kvm_exit line")
    r.add_argument("--json", action="store_true", help="one JSON document (vmxlab-run/1)")
    for op, meta, what in (("set", "FIELD=VALUE", "write VALUE into FIELD"), ("or", "FIELD=BITS", "set BITS in FIELD"),
                           ("andnot", "FIELD=BITS", "clear BITS in FIELD")):
        r.add_argument(f"--{op}", dest="edits", action=_Edit, metavar=meta,
                       help=f"{what} (a VMCS field) after the hypervisor's setup, before VMLAUNCH; repeatable, "
                       "applied in order")
    r.add_argument("--max-exits", type=_count, default=100_000, metavar="N",
                   help="stop the run at the VM exit after N handled ones (default 100000)")
    r.add_argument("--timeout", type=_seconds, default=30.0, metavar="S",
                   help="stop the virtualized run after S seconds (default 30)")
    r.set_defaults(func=_cmd_run)

    ru = sub.add_parser("rules", help="the catalogue of VM-entry check rules (id, SDM section, outcome)")
    ru.set_defaults(func=_cmd_rules)

    df = sub.add_parser("diff", help="differential runner: generated programs on the simulator and on KVM")
    df.add_argument("--count", type=_int, default=100, metavar="N", help="programs to run (default 100)")
    df.add_argument("--seed", type=_int, default=1, metavar="S", help="generator seed (default 1)")
    df.add_argument("--cpl", default="both", metavar="0|3|both", help="privilege level of the programs "
                    "(both: alternating; default)")
    df.add_argument("--json", action="store_true", help="the report as JSON")
    df.add_argument("--no-shrink", action="store_true", help="report divergences without shrinking them")
    df.set_defaults(func=_cmd_diff)

    dec = sub.add_parser("decode", help="one fact from the tables")
    dsub = dec.add_subparsers(dest="what_kind", required=True, parser_class=_Parser)
    f = dsub.add_parser("field", help="a VMCS field by name or encoding")
    f.add_argument("what", nargs="?", metavar="NAME|ENCODING")
    f.add_argument("--list", action="store_true", help="every field, one line each")
    f.set_defaults(func=_decode_field)
    e = dsub.add_parser("exit", help="a basic exit reason (or an exit-reason field value)")
    e.add_argument("what", metavar="N")
    e.set_defaults(func=_decode_exit)
    er = dsub.add_parser("error", help="a VM-instruction error number")
    er.add_argument("what", metavar="N")
    er.set_defaults(func=_decode_error)
    a = dsub.add_parser("ar", help="segment access rights in VMCS format")
    a.add_argument("what", metavar="VALUE")
    a.set_defaults(func=_decode_ar)
    co = dsub.add_parser("controls", help="names of the set bits of a control value")
    co.add_argument("what", metavar="FIELD")
    co.add_argument("value", nargs="?", metavar="VALUE")
    co.add_argument("--cpu", metavar="PROFILE", help="also say which bits the profile does not allow")
    co.set_defaults(func=_decode_controls)
    q = dsub.add_parser("qualification", help="an exit qualification for an exit reason")
    q.add_argument("what", metavar="REASON")
    q.add_argument("value", nargs="?", metavar="VALUE")
    q.set_defaults(func=_decode_qualification)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except BadInput as e:
        print(f"vmxlab: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
