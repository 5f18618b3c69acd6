"""bench.vmx runs its three round trips (small counts) and degrades to a note
without /dev/kvm; the Python-handler loop runs the exits it is asked for."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpuid_loop_batches_time_exactly_the_exits_asked_for():
    sys.path.insert(0, ROOT)
    from bench.vmx import CpuidLoop
    loop = CpuidLoop()
    assert len(loop.batch(50)) == 50
    assert len(loop.batch(30)) == 30                 # resumes the same guest after a batch
    assert loop.cpu.exit_count == 51 + 31


def test_machine_floor_times_the_exits_asked_for():
    sys.path.insert(0, ROOT)
    from bench.vmx import MachineFloor
    floor = MachineFloor()
    assert len(floor.batch(40)) == 40
    assert len(floor.batch(10)) == 10


def test_bench_vmx_without_kvm_keeps_the_simulator_figures():
    env = dict(os.environ, VMXLAB_KVM_DEVICE="/nonexistent/kvm")
    r = subprocess.run([sys.executable, "-m", "bench.vmx", "--exits", "200"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Python handler (simulator)" in r.stdout and "machine-code hypervisor" in r.stdout
    assert "bare machine, no VMX" in r.stdout and "raw unicorn hook into Python" in r.stdout
    assert "/nonexistent/kvm does not exist" in r.stdout and "Traceback" not in r.stderr


def test_bench_vmx_rejects_a_tiny_count():
    r = subprocess.run([sys.executable, "-m", "bench.vmx", "--exits", "5"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_raw_hook_floor_times_the_exits_asked_for():
    sys.path.insert(0, ROOT)
    from bench.vmx import RawHookFloor
    floor = RawHookFloor()
    assert len(floor.batch(40)) == 40
    assert len(floor.batch(10)) == 10
