"""Admission by work (export/steps/admission.py), on its own: the shared backlog of one
encoder, as the entry steps and the encoder's stubs use it, across real processes.

The served behaviour (refusals under a flood, a request's wait within its budget) is in
test_overload.py; here each rule is checked where a failure is easy to read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.steps import admission
from export.steps.admission import ENCODER_SHARE, AdmissionSettings, Backlog, Overloaded, work_units

BUDGET_S = 1.0


@pytest.fixture
def backlog(tmp_path: Path):
    opened = Backlog("enc", server=os.getpid(), folder=tmp_path)
    with opened.batch(0, 1):  # a stub's first batch, which is not measured
        pass
    yield opened
    opened.close()


def measured(backlog: Backlog, seconds_per_unit: float, units: float = admission.MIN_SAMPLE_UNITS) -> None:
    """Run one encoder batch of `units` that takes `units * seconds_per_unit`."""
    backlog.admit(units, BUDGET_S)
    with backlog.batch(0, units) as finished:
        time.sleep(units * seconds_per_unit)
        finished(units)


def test_nothing_measured_or_nothing_queued_admits_anything(tmp_path: Path) -> None:
    backlog = Backlog("enc", server=os.getpid(), folder=tmp_path)
    for _ in range(3):  # a stub's first batch (cold) and small batches are no measurement...
        backlog.admit(10, BUDGET_S)
        with backlog.batch(0, 10):
            time.sleep(0.05)
    backlog.admit(1e9, BUDGET_S)  # ...so there is no estimate, and no refusal
    with backlog.batch(0, 1e9) as finished:
        finished(1e9)
    assert backlog.queued() == 0 and backlog.seconds_per_unit() > 0
    backlog.admit(1e9, BUDGET_S)  # larger than the budget, but nothing ahead of it: served
    assert backlog.queued() == 1e9
    backlog.close()


def test_refuses_what_would_finish_past_the_encoders_share_of_the_budget(backlog: Backlog) -> None:
    measured(backlog, 0.001)  # about 1 ms per unit
    per_unit = backlog.seconds_per_unit()
    assert 0.001 <= per_unit < 0.002
    fits = int(ENCODER_SHARE * BUDGET_S / per_unit)
    backlog.admit(fits - 10, BUDGET_S)
    with pytest.raises(Overloaded, match=r"server overloaded: about .* s of work is queued .* retry later"):
        backlog.admit(20, BUDGET_S)
    backlog.admit(5, BUDGET_S)  # a smaller one still fits
    backlog.check(BUDGET_S)  # the work ahead alone is within the share
    backlog.admit(fits, 10 * BUDGET_S)  # a longer budget lets more in...
    with pytest.raises(Overloaded, match="wait budget"):
        backlog.check(BUDGET_S)  # ...and the shorter one is then past before any work is spent


def test_the_encoder_reports_work_done_part_by_part(backlog: Backlog) -> None:
    measured(backlog, 0.0001)
    backlog.admit(300, BUDGET_S)
    with backlog.batch(0, 300) as finished:
        finished(100)
        assert backlog.queued() == 200
        finished(150)
        assert backlog.queued() == 50
    assert backlog.queued() == 0  # what it did not report (50) leaves with the batch


def test_a_failed_batch_leaves_the_count_and_not_the_estimate(backlog: Backlog) -> None:
    measured(backlog, 0.0001)
    before = backlog.seconds_per_unit()
    backlog.admit(1000, BUDGET_S)
    with pytest.raises(RuntimeError), backlog.batch(0, 1000):
        time.sleep(0.3)  # far slower than measured, but it failed: not a measurement
        raise RuntimeError("encoder failed")
    assert backlog.queued() == 0 and backlog.seconds_per_unit() == before
    backlog.admit(10, BUDGET_S)
    assert backlog.queued() == 10  # and no instance is left marked as running


def test_a_slower_batch_is_believed_at_once_a_faster_one_gradually(backlog: Backlog) -> None:
    measured(backlog, 0.0002)
    usual = backlog.seconds_per_unit()
    measured(backlog, 0.001)  # a flood took the encoder's CPU
    assert backlog.seconds_per_unit() >= 0.001
    measured(backlog, 0.0002)
    assert usual < backlog.seconds_per_unit() < 0.001


def test_a_small_batch_does_not_change_a_measured_cost(backlog: Backlog) -> None:
    measured(backlog, 0.0002)
    before = backlog.seconds_per_unit()
    measured(backlog, 0.01, units=20)  # one short query: mostly the fixed cost of a batch
    assert backlog.seconds_per_unit() == before


def test_work_that_never_reaches_the_encoder_is_forgotten_once_it_idles(
    backlog: Backlog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admission, "IDLE_S", 0.2)
    measured(backlog, 0.001)
    backlog.admit(int(ENCODER_SHARE * BUDGET_S / backlog.seconds_per_unit()), BUDGET_S)  # then lost
    with pytest.raises(Overloaded):
        backlog.admit(100, BUDGET_S)
    time.sleep(0.3)
    backlog.admit(100, BUDGET_S)
    assert backlog.queued() == 100


def test_a_restarted_encoder_forgets_the_work_in_flight(backlog: Backlog) -> None:
    measured(backlog, 0.001)
    backlog.admit(500, BUDGET_S)
    backlog.restart(0)  # the stub running those 500 died, and its successor starts
    assert backlog.queued() == 0


def test_the_backlog_is_shared_by_the_stubs_of_one_server_only(tmp_path: Path) -> None:
    mine = Backlog("enc", server=os.getpid(), folder=tmp_path)
    script = (
        "import sys; from pathlib import Path; from export.steps.admission import Backlog\n"
        "b = Backlog('enc', server=int(sys.argv[1]), folder=Path(sys.argv[2])); b.admit(123, 1.0); b.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(os.getpid()), str(tmp_path)], check=True)
    assert mine.queued() == 123  # what another process admitted
    other = Backlog("enc", server=os.getppid(), folder=tmp_path)  # another server on this host
    assert other.queued() == 0
    other.close()
    mine.close()


def test_the_states_of_servers_that_exited_are_removed(tmp_path: Path) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{admission.PREFIX}{int(exited.stdout)}-enc"
    stale.write_bytes(b"\0" * 64)
    Backlog("enc", server=os.getpid(), folder=tmp_path).close()
    assert not stale.exists()
    assert (tmp_path / f"{admission.PREFIX}{os.getpid()}-enc").exists()


def test_settings_travel_as_config_parameters() -> None:
    settings = AdmissionSettings("minilm_encoder", 1500)
    assert AdmissionSettings.from_parameters({"other": "x", **settings.parameters()}) == settings
    assert AdmissionSettings.from_parameters({**settings.parameters(), "max_wait_ms": "0"}) is None
    assert AdmissionSettings.from_parameters({}) is None
    assert work_units(rows=2, tokens=30) == 2 * admission.UNITS_PER_ROW + 30


def test_an_entry_step_gets_a_refusal_to_send_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "state_folder", lambda: tmp_path)
    gate = admission.Admission(AdmissionSettings("enc", int(BUDGET_S * 1000)))
    encoder = Backlog("enc", server=os.getppid(), folder=tmp_path)  # the stub's server: its parent
    with encoder.batch(0, 1):  # the first batch is not measured
        pass
    measured(encoder, 0.001)
    assert gate.refusal(100) is None and gate.refusal() is None
    assert encoder.queued() == 100  # admitted and counted; the check counts nothing
    assert "server overloaded" in gate.refusal(int(ENCODER_SHARE * BUDGET_S / encoder.seconds_per_unit()))
    gate.close()
    encoder.close()
