"""Random sequences of lifecycle calls and clock moves against a small model of AWS's key states,
deletion windows and rotation (hypothesis stateful testing): the embedded service must agree with
the model on every answer."""

import shutil
import tempfile

import pytest
from botocore.exceptions import ClientError
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from volumed import kms as kms_pkg
from volumed.clock import FakeClock
from tests.kms.conftest import START, ShapeCheckedClient

pytestmark = pytest.mark.timeout(120)
DAY = 86400


class KeyLifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="volumed-kms-model-")
        self.clock = FakeClock(START)
        self.raw = kms_pkg.connect(self.dir + "/ks", clock=self.clock)
        self.kms = ShapeCheckedClient(self.raw)
        self.key = self.kms.create_key()["KeyMetadata"]["KeyId"]
        self.blob = self.kms.encrypt(KeyId=self.key, Plaintext=b"model")["CiphertextBlob"]
        # the model
        self.state = "Enabled"
        self.deletion_at = None
        self.rotation = None          # (period days, anchor seconds) when enabled
        self.rotated = []             # model's rotations: (epoch seconds, type)

    def teardown(self):
        self.raw.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _now(self):
        return self.clock.time()

    def _expect(self, call, error):
        if self.state == "Deleted":
            error = "NotFoundException"
        if error is None:
            return call()
        with pytest.raises(ClientError) as ei:
            call()
        assert ei.value.response["Error"]["Code"] == error
        return None

    def _time_passes(self):
        if self.state == "PendingDeletion" and self._now() >= self.deletion_at:
            self.state = "Deleted"
        if self.state == "Enabled" and self.rotation:
            period, anchor = self.rotation
            while anchor + period * DAY <= self._now():
                anchor += period * DAY
                self.rotated.append((anchor, "AUTOMATIC"))
            self.rotation = (period, anchor)

    @rule(days=st.sampled_from([0.5, 1, 6, 7, 30, 100, 400]))
    def advance(self, days):
        self.clock.advance(days=days)
        self._time_passes()

    @rule()
    def disable(self):
        err = "KMSInvalidStateException" if self.state == "PendingDeletion" else None
        if self._expect(lambda: self.kms.disable_key(KeyId=self.key), err) is not None:
            self.state = "Disabled"

    @rule()
    def enable(self):
        err = "KMSInvalidStateException" if self.state == "PendingDeletion" else None
        if self._expect(lambda: self.kms.enable_key(KeyId=self.key), err) is not None:
            if self.state == "Disabled" and self.rotation and self.rotation[1] + self.rotation[0] * DAY <= self._now():
                self.rotated.append((self._now(), "AUTOMATIC"))
                self.rotation = (self.rotation[0], self._now())
            self.state = "Enabled"

    @rule(window=st.integers(7, 30))
    def schedule(self, window):
        err = "KMSInvalidStateException" if self.state == "PendingDeletion" else None
        if self._expect(lambda: self.kms.schedule_key_deletion(KeyId=self.key, PendingWindowInDays=window), err):
            self.state, self.deletion_at = "PendingDeletion", self._now() + window * DAY

    @rule()
    def cancel(self):
        err = None if self.state == "PendingDeletion" else "KMSInvalidStateException"
        if self._expect(lambda: self.kms.cancel_key_deletion(KeyId=self.key), err) is not None:
            self.state, self.deletion_at = "Disabled", None

    @rule(period=st.sampled_from([90, 180, 365]))
    def enable_rotation(self, period):
        err = {"Disabled": "DisabledException", "PendingDeletion": "KMSInvalidStateException"}.get(self.state)
        if self._expect(lambda: self.kms.enable_key_rotation(KeyId=self.key, RotationPeriodInDays=period), err) is not None:
            anchor = self.rotation[1] if self.rotation else self._now()
            self.rotation = (period, anchor)
            self._time_passes()

    @rule()
    def rotate_now(self):
        err = {"Disabled": "DisabledException", "PendingDeletion": "KMSInvalidStateException"}.get(self.state)
        if sum(t == "ON_DEMAND" for _, t in self.rotated) >= 20:
            return
        if self._expect(lambda: self.kms.rotate_key_on_demand(KeyId=self.key), err) is not None:
            self.rotated.append((self._now(), "ON_DEMAND"))

    @rule()
    def decrypt_old(self):
        err = {"Disabled": "DisabledException", "PendingDeletion": "KMSInvalidStateException"}.get(self.state)
        r = self._expect(lambda: self.kms.decrypt(CiphertextBlob=self.blob), err)
        if r is not None:
            assert r["Plaintext"] == b"model"

    @invariant()
    def agrees(self):
        if self.state == "Deleted":
            with pytest.raises(self.kms.exceptions.NotFoundException):
                self.kms.describe_key(KeyId=self.key)
            return
        md = self.kms.describe_key(KeyId=self.key)["KeyMetadata"]
        assert md["KeyState"] == self.state
        rotations = self.kms.list_key_rotations(KeyId=self.key, Limit=1000)["Rotations"]
        assert [(r["RotationDate"].timestamp(), r["RotationType"]) for r in rotations] == self.rotated
        if self.state == "Enabled":  # every rotation leaves the first ciphertext decryptable
            assert self.kms.decrypt(CiphertextBlob=self.blob)["Plaintext"] == b"model"


KeyLifecycle.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestKeyLifecycle = KeyLifecycle.TestCase
