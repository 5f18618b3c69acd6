"""KVM tests skip, with the reason, where /dev/kvm is missing or refuses
(kvm_guest.needs_kvm); the reason is also printed in the summary of every run."""
from kvm_guest import KVM_REASON


def pytest_terminal_summary(terminalreporter):
    if KVM_REASON is not None:
        terminalreporter.write_line(f"tests/kvm: tests that run guests were skipped: /dev/kvm unusable here: {KVM_REASON}")
