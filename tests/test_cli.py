"""Every CLI verb of the foundation, including bad input: exit 2, one line, no traceback."""
import json
import subprocess
import sys

import pytest

from vmxlab.cli import main


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:          # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_decode_field_by_encoding(capsys):
    code, out, _ = run(capsys, "decode", "field", "0x681e")
    assert code == 0
    assert out.splitlines()[0] == "GUEST_RIP"
    assert "natural width" in out and "guest" in out


def test_decode_field_high_access(capsys):
    code, out, _ = run(capsys, "decode", "field", "0x2011")
    assert code == 0 and out.startswith("TSC_OFFSET (HIGH access")


def test_decode_field_list(capsys):
    code, out, _ = run(capsys, "decode", "field", "--list")
    lines = out.splitlines()
    assert code == 0 and 175 <= len(lines) <= 210
    assert any(line.startswith("0x2034  TERTIARY_VM_EXEC_CONTROL") for line in lines)


def test_decode_exit_error_ar(capsys):
    assert run(capsys, "decode", "exit", "33")[1].startswith("33 INVALID_STATE")
    code, out, _ = run(capsys, "decode", "exit", "0x80000021")
    assert "entry_failure" in out
    out = run(capsys, "decode", "error", "8")[1]
    assert "VMXERR_ENTRY_INVALID_HOST_STATE_FIELD" in out and "host-state" in out
    out = run(capsys, "decode", "ar", "0xa09b")[1]
    assert "code XR accessed, DPL 0, P, L, G" in out


def test_decode_controls_against_profile(capsys):
    code, out, _ = run(capsys, "decode", "controls", "PIN_BASED_VM_EXEC_CONTROL", "0", "--cpu", "skylake-client")
    assert code == 1 and "clear but required (allowed-0 is 1): bit 1, bit 2, bit 4" in out
    code, out, _ = run(capsys, "decode", "controls", "SECONDARY_VM_EXEC_CONTROL", "0x2")
    assert code == 0 and "SECONDARY_EXEC_ENABLE_EPT" in out


def test_decode_qualification(capsys):
    code, out, _ = run(capsys, "decode", "qualification", "IO_INSTRUCTION", "0x3f80000")
    assert code == 0 and "OUT" in out and "0x3f8" in out


@pytest.mark.parametrize("name", ["skylake-client", "penryn", "icelake-server", "kvm-nested"])
def test_caps_every_shipped_profile(capsys, name):
    code, out, _ = run(capsys, "caps", name)
    assert code == 0
    assert "Basic VMX information" in out and "CR0 fixed bits" in out
    assert "PIN_BASED_EXT_INTR_MASK" in out


def test_caps_list_and_live(capsys):
    code, out, _ = run(capsys, "caps", "--list")
    assert code == 0 and "skylake-client" in out
    code, out, err = run(capsys, "caps", "--live")
    # this machine has no readable VMX MSRs: one plain line, status 2
    assert code in (0, 2)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("vmxlab: ")


def test_demo(capsys):
    code, out, _ = run(capsys, "demo")
    assert code == 0 and "PIN_BASED_VM_EXEC_CONTROL: wanted 0x00000000 -> 0x00000016" in out


@pytest.mark.parametrize("argv,needle", [
    (["decode", "field", "GUEST_FOO"], "unknown VMCS field 'GUEST_FOO'"),
    (["decode", "field", "0x6830"], "unknown VMCS field 0x6830"),
    (["decode", "error", "99"], "unknown VM-instruction error"),
    (["decode", "exit", "zz"], "is not a number"),
    (["decode", "exit", "35"], "35"),
    (["decode", "ar", "0x1ffffffff"], "wider than 32 bits"),
    (["decode", "controls", "GUEST_RIP", "1"], "is not a control field"),
    (["decode", "controls", "PIN_BASED_VM_EXEC_CONTROL", "0x100000000"], "wider than 32 bits"),
    (["decode", "qualification", "NOPE", "1"], "unknown exit reason"),
    (["caps", "no-such-profile"], "unknown profile"),
    (["decode"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_one_line_status_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in err


def test_malformed_profile_file_via_subprocess(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"msrs": {"IA32_VMX_BASIC": "0x1"}}))
    r = subprocess.run([sys.executable, "-m", "vmxlab.cli", "caps", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"vmxlab: {bad}: missing IA32_VMX_PINBASED_CTLS"]
