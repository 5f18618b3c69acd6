"""The differential runner (kvm/progen.py, kvm/differential.py, `vmxlab diff`).

Without /dev/kvm the generator, the flag analysis, the comparison, the shrinker
(against a fake second backend) and the simulator side still run; the tests that
need KVM skip with the reason (kvm_guest.needs_kvm)."""
import json
import os
import subprocess
import sys

import pytest

from kvm_guest import KVM_REASON, needs_kvm
from vmxlab.cli import main
from vmxlab.errors import BadInput
from vmxlab.kvm import differential as D
from vmxlab.kvm import progen as G
from vmxlab.kvm.progen import AF, CF, OF, PF, SF, ZF, Insn, Program, Unit

SEED = 11


@pytest.fixture(scope="module")
def sim():
    return D.SimBackend()


@pytest.fixture(scope="module")
def kvm():
    if KVM_REASON is not None:
        pytest.skip(f"/dev/kvm unusable here: {KVM_REASON}")
    k = D.KvmBackend()
    yield k
    k.close()


MUL = Insn("mul rbx", defines=OF | CF, undefined=SF | ZF | AF | PF)     # SDM "MUL", Flags Affected


def program(*lines, cpl=0, regs=None, **kw):
    """A hand-written program: one unit per item (an Insn, or text: 'a; b' for a
    unit of two instructions that touch no flags)."""
    base = dict(G.generate(0, 0, cpl).regs)
    base.update(regs or {})
    units = tuple(Unit("arith", (line,) if isinstance(line, Insn) else
                       tuple(Insn(t.strip()) for t in line.split(";")), i + 1)
                  for i, line in enumerate(lines))
    return Program(0, 0, cpl, units, base, bytes(4096), bytes(4096), **kw)


# ---- the generator ----------------------------------------------------------------------
def test_generation_is_deterministic():
    for cpl in (0, 3):
        for i in range(20):
            a, b = G.generate(SEED, i, cpl), G.generate(SEED, i, cpl)
            assert a.source() == b.source() and a.regs == b.regs and a.data == b.data and a.stack == b.stack
    assert G.generate(SEED, 1, 0).source() != G.generate(SEED, 2, 0).source()
    assert G.generate(SEED, 1, 0).source() != G.generate(SEED + 1, 1, 0).source()


def test_generated_programs_assemble_and_run_to_their_end_on_the_simulator(sim):
    """Every program assembles (guests.asm checks each instruction by decoding it)
    and the simulator alone runs it to a halt: END reached, or the handler of a
    fault (the deliberate one, or #DE from IDIV of the minimum value by -1), or a
    triple fault for the deliberate stack fault at CPL0."""
    seen = set()
    for cpl in (0, 3):
        for i in range(150):
            p = G.generate(SEED, i, cpl)
            code = p.assemble()
            assert 0 < len(code) < D.CODE_LIMIT
            r = sim.run(p, code)
            assert r.error is None, (p.name, r.error)
            assert r.exits[-1] in (("HLT",), ("TRIPLE_FAULT",)), (p.name, r.exits[-1])
            how = D.ending(p, r)
            fault = next((u.fault for u in p.units if u.fault), None)
            if fault is None:
                assert how in ("end", "#DE"), (p.name, how)
                assert how == "end" or "idiv" in p.source()
            elif fault == "privileged":                   # CPL0-only instruction at CPL3
                assert how == "#GP", (p.name, how)
            seen.add(how)
            seen.update(u.cls for u in p.units)
            seen.add(p.entry)
    assert {"arith", "mem", "stack", "branch", "io", "fault", "system"} <= seen
    assert {"end", "#PF", "#GP", "#DE", "#UD", "triple fault"} <= seen
    assert {"direct", "iretq", "sysret"} <= seen


def test_removing_units_keeps_programs_valid(sim):
    """What the shrinker relies on: any subset of units still assembles and halts."""
    p = G.generate(SEED, 3, 0)
    for k in range(len(p.units)):
        q = p.with_units(p.units[:k] + p.units[k + 1::2])
        r = sim.run(q)
        assert r.exits[-1] in (("HLT",), ("TRIPLE_FAULT",))


def test_bad_cpl_is_refused():
    with pytest.raises(ValueError):
        G.generate(1, 0, 2)
    with pytest.raises(BadInput):
        D.parse_cpls("1")
    assert D.parse_cpls("both") == (0, 3)


# ---- undefined flags --------------------------------------------------------------------
def test_undefined_flags_follow_the_sdm():
    end, before = G.undefined_flags(program(MUL))
    assert end == SF | ZF | AF | PF and before[G.CODE] == 0
    # ADD defines all six again; INC leaves CF alone, so a CF left undefined stays so
    assert G.undefined_flags(program(MUL, Insn("add rax, rbx", defines=G.ARITH)))[0] == 0
    div = Insn("div rbx", undefined=G.ARITH)
    assert G.undefined_flags(program(div, Insn("inc rax", defines=G.ARITH & ~CF)))[0] == CF


def test_the_generator_annotates_mul_and_div_as_the_sdm_says():
    for i in range(60):
        for u in G.generate(SEED, i, 0).units:
            for ins in u.insns:
                op = ins.text.split()[0]
                if op in ("mul", "imul"):
                    assert (ins.defines, ins.undefined) == (OF | CF, SF | ZF | AF | PF), ins
                elif op in ("div", "idiv"):
                    assert (ins.defines, ins.undefined) == (0, G.ARITH), ins
                elif op in ("and", "or", "xor", "test"):
                    assert ins.undefined == AF, ins
                elif op.startswith(("j", "set", "cmov")) and op not in ("jmp",):
                    assert ins.reads, ins


def test_generated_flag_annotations():
    g = G._Gen(__import__("random").Random(0), 0)
    assert G._shift_flags("shl", 1, 64) == {"defines": CF | SF | ZF | PF | OF, "undefined": AF}
    assert G._shift_flags("shl", 3, 64)["undefined"] == AF | OF
    assert G._shift_flags("shr", 20, 16)["undefined"] == AF | OF | CF   # count >= width
    assert G._shift_flags("sar", 20, 16)["undefined"] == AF | OF
    assert G._shift_flags("rol", 0, 64) == {}
    assert G._shift_flags("rcl", 2, 8) == {"defines": CF, "undefined": OF}
    assert g.flags_setter().defines == G.ARITH


def test_undefined_flags_meet_at_a_forward_label():
    # the branch skips a MUL: after the label SF/ZF/AF/PF are undefined on one path
    units = (Unit("branch", (Insn("cmp rax, rbx", defines=G.ARITH), Insn("je {L}", reads=ZF)), 1, target=2),
             Unit("arith", (Insn("mul rcx", defines=OF | CF, undefined=SF | ZF | AF | PF),), 2),
             Unit("arith", (Insn("nop"),), 3))
    p = program().with_units(units)
    end, before = G.undefined_flags(p)
    assert end == SF | ZF | AF | PF
    assert before[G.CODE] == 0


# ---- comparison ------------------------------------------------------------------------
def result(rflags=0x202, rax=1, exits=(("HLT",),)):
    st = {k: 0 for k in D.COMPARED_KEYS}
    st.update(GUEST_RIP=0x10100, GUEST_RFLAGS=rflags, RAX=rax)
    return D.Result(list(exits), st, {p: bytes(4096) for p in D.COMPARED_PAGES})


def test_comparison_masks_exactly_the_undefined_flags():
    p = program(MUL)
    assert D.compare(p, result(0x202 | ZF), result(0x202)) == []          # ZF undefined after MUL
    d = D.compare(p, result(0x202 | CF), result(0x202))                    # CF is defined
    assert [x.key for x in d] == ["GUEST_RFLAGS"] and "CF" in d[0].text()
    d = D.compare(p, result(rax=1), result(rax=2))
    assert [x.key for x in d] == ["RAX"]
    d = D.compare(p, result(), result(exits=(("IO_INSTRUCTION", 0x1F0043, "01000000"), ("HLT",))))
    assert d[0].key == "exits" and "IO_INSTRUCTION OUT port 0x1f size 4 imm" in d[0].text()


# ---- the shrinker, against a fake second backend ------------------------------------------
class FakeKvm:
    """The simulator, but every BSWAP it executes also flips bit 0 of RBX."""

    def __init__(self, sim):
        self.sim = sim

    def run(self, prog, code=None):
        r = self.sim.run(prog, code)
        executed = any(i.text.startswith("bswap") for u in prog.units for i in u.insns)
        if executed:
            r.state = dict(r.state, RBX=r.state["RBX"] ^ 1)
        return r


def test_shrinker_reduces_an_injected_divergence_to_the_one_instruction(sim):
    fake = FakeKvm(D.SimBackend())
    p = G.generate(SEED, 5, 0, length=30)
    p = p.with_units(tuple(u for u in p.units if u.fault is None and u.cls != "branch"))
    bswap = Unit("arith", (Insn("bswap r9"),), 1000)
    units = list(p.units)
    units.insert(len(units) // 2, bswap)
    p = p.with_units(units)
    out = D.check(p, sim, fake)
    assert out.verdict == "diverge"
    assert [u.uid for u in out.shrunk.units] == [1000]
    assert [d.key for d in out.shrunk_diffs] == ["RBX"]
    assert out.shrunk.source().splitlines() == ["bswap r9", f"out {G.END_PORT:#x}, eax", "hlt"]


# ---- known quirks ------------------------------------------------------------------------
def test_cmpxchg_quirk_is_neutralized_after_each_register_cmpxchg32():
    p = program("cmpxchg ebx, ecx", "cmpxchg rbx, rcx", "cmpxchg dword ptr [rsi], ecx", cpl=3)
    q = D.QUIRKS[0]
    assert q.applies(p) and not q.applies(program("cmpxchg ebx, ecx", cpl=0))
    assert [i.text for u in q.neutralize(p).units for i in u.insns] == [
        "cmpxchg ebx, ecx", "mov ebx, ebx", "cmpxchg rbx, rcx", "cmpxchg dword ptr [rsi], ecx"]


# ---- against KVM ----------------------------------------------------------------------------
@needs_kvm
def test_a_few_hundred_programs_agree_with_kvm(sim, kvm):
    verdicts = {}
    for i in range(150):
        for cpl in (0, 3):
            out = D.check(G.generate(SEED, i, cpl), sim, kvm)
            verdicts.setdefault(out.verdict, []).append(out)
            assert out.verdict != "diverge", (out.program.name, [d.text() for d in out.shrunk_diffs or out.diffs],
                                              D.disassemble(out.shrunk or out.program))
    assert len(verdicts["agree"]) >= 290


@needs_kvm
def test_cmpxchg32_failure_at_cpl3_is_the_known_amd_quirk(sim, kvm):
    regs = {"RAX": 0xAAAAAAAA_11111111, "RBX": 0xBBBBBBBB_33333333, "RCX": 0xCCCCCCCC_22222222}
    out = D.check(program("cmpxchg ebx, ecx", cpl=3, regs=regs), sim, kvm)
    if out.verdict == "agree":
        pytest.skip("this host writes back the destination like the SDM says (not the AMD behaviour)")
    assert out.verdict == "quirk" and out.quirk == "amd-cmpxchg32-failure"
    assert [d.key for d in out.diffs] == ["RBX"]
    assert out.sim.state["RBX"] == 0x33333333          # DEST := TEMP, a 32-bit write (SDM "CMPXCHG")
    # the successful comparison writes no accumulator on either side
    regs["RBX"] = 0xBBBBBBBB_11111111
    out = D.check(program("cmpxchg ebx, ecx", cpl=3, regs=regs), sim, kvm)
    assert out.verdict == "agree" and out.sim.state["RAX"] == 0xAAAAAAAA_11111111


# ---- command line ------------------------------------------------------------------------
def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, word", [(("--count", "0"), "--count"), (("--cpl", "2"), "--cpl"),
                                        (("--count", "x"), "count"), (("--seed", "1.5"), "seed")])
def test_cli_bad_input_is_one_line_and_status_2(capsys, argv, word):
    code, out, err = run_cli(capsys, "diff", *argv)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and word in err


def test_cli_without_kvm_is_one_line_and_status_2():
    env = dict(os.environ, VMXLAB_KVM_DEVICE="/nonexistent/kvm")
    p = subprocess.run([sys.executable, "-m", "vmxlab.cli", "diff", "--count", "3"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and not p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and "/nonexistent/kvm" in p.stderr


@needs_kvm
def test_cli_reports_the_agreement_rate(capsys):
    code, out, _ = run_cli(capsys, "diff", "--count", "20", "--seed", str(SEED))
    assert code == 0
    assert "agreement rate" in out and "diverge 0" in out
    code, out, _ = run_cli(capsys, "diff", "--count", "10", "--seed", str(SEED), "--cpl", "3", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["programs"] == 10 and doc["cpl"] == [3] and doc["diverge"] == 0
    assert doc["agree"] + doc["quirk"] == 10 and sum(doc["endings"].values()) == 10
