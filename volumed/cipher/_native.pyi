"""Typed API of the native sector cipher extension ``volumed._native`` (built from native/).

The contract is volumed.cipher's docstring; this stub adds the types and the extension's extras
(thread control, known-answer helpers). Buffers are anything exporting the buffer protocol as
contiguous bytes: bytearray, memoryview, numpy arrays; bytes where the argument is only read.
"""

from typing import Final

from typing_extensions import Buffer

PARALLEL_MIN_BYTES: Final[int]  # batches at least this large are split across threads
MAX_SECTOR_SIZE: Final[int]

class XtsCipher:
    """AES-256-XTS, LUKS2 aes-xts-plain64 tweak (sector n -> n * sector_size/512, little-endian)."""

    sector_size: Final[int]
    closed: bool
    def __init__(self, key: Buffer, sector_size: int = 4096) -> None:
        """key: 64 bytes, halves must differ (ValueError); copied into locked memory and the
        caller's writable buffer overwritten with zeros. sector_size: a multiple of 512."""
    def encrypt(self, buf: Buffer, first_sector: int, out: Buffer | None = None) -> None: ...
    def decrypt(self, buf: Buffer, first_sector: int, out: Buffer | None = None) -> None: ...
    def close(self) -> None:
        """Wipe the key; later calls raise ValueError. Batches running in other threads finish."""
    def __enter__(self) -> "XtsCipher": ...
    def __exit__(self, *exc: object) -> None: ...

class GcmCipher:
    """AES-256-GCM per sector: 12-byte nonce and 16-byte tag each, AAD aad_prefix || be64(n)."""

    sector_size: Final[int]
    closed: bool
    def __init__(self, key: Buffer, aad_prefix: Buffer, sector_size: int = 4096) -> None: ...
    def encrypt(self, buf: Buffer, first_sector: int, nonces: Buffer, tags_out: Buffer,
                out: Buffer | None = None) -> None: ...
    def decrypt(self, buf: Buffer, first_sector: int, nonces: Buffer, tags: Buffer,
                out: Buffer | None = None) -> list[int]:
        """Indices (relative to buf) of sectors that failed to verify; those are zero-filled."""
    def derive(self, salt: Buffer, info: Buffer, aad_prefix: Buffer) -> "GcmCipher":
        """A new GcmCipher keyed by HKDF-SHA256(this key, salt, info); the subkey never passes
        through Python (OpenSSL derives it into locked memory)."""
    def close(self) -> None: ...
    def __enter__(self) -> "GcmCipher": ...
    def __exit__(self, *exc: object) -> None: ...

def openssl_version() -> str:
    """The libcrypto in use, e.g. "OpenSSL 3.0.22"."""
def set_threads(n: int, adaptive: bool = True) -> None:
    """Threads (caller plus pool workers) for one large batch, 1..64; default: usable CPUs.
    adaptive=False keeps inviting helpers even when they do not speed batches up (tests)."""
def pool_stats() -> dict[str, int]:
    """Batches with helpers invited, batches run solo, chunks run by helpers, chunks invited."""
def get_threads() -> int: ...
def pool_workers() -> int:
    """Worker threads started so far."""

# Known-answer helpers (fresh context per call, caller's key: tests only, never volume data).
def kat_xts(key: Buffer, tweak: Buffer, data: Buffer, encrypt: bool) -> bytes: ...
def kat_gcm_seal(key: Buffer, nonce: Buffer, aad: Buffer, data: Buffer) -> tuple[bytes, bytes]: ...
def kat_gcm_open(key: Buffer, nonce: Buffer, aad: Buffer, data: Buffer, tag: Buffer) -> bytes | None: ...

class VolumeCore:
    """One open volume's decrypted bytes served by the native core (native/vcore.h): XTS (LUKS2
    aes-xts-plain64, all-zero on-disk sector = hole), GCM format 2 (native/vc_gcmstore.c) or the
    null cipher (benchmarks). Thread-safe;
    the GIL is released around every I/O call. Errors: volumed.errors.KeyAccessError (key wiped),
    UsageError (outside the volume), StateError, OSError (the backing file's errno), MemoryError."""

    size: Final[int]
    sector_size: Final[int]
    cipher: Final[str]
    def __init__(self, fd: int, *, cipher: str, key: Buffer | None = None, data_offset: int = 0,
                 size: int, sector_size: int = 4096, journal_fd: int = -1, name: str = "",
                 history_fd: int = -1, history_max_bytes: int = 32 << 20,
                 gcm: tuple[Buffer, Buffer, Buffer, bytes, bytes, int, int, int, int, int, int,
                            int, bytes, str, str] | None = None) -> None:
        """fd: the backing file (the core keeps its own dup; yours stays yours). key: 64 bytes for
        xts (copied into locked memory, a writable buffer is overwritten with zeros), None for null.
        journal_fd: the power-loss recorder's undo journal (RecordingBackingFile's format), or -1.
        history_fd: with a journal, an append-only copy of its records that flushes leave alone
        (the fault layer's previous page images, for rollback), emptied past history_max_bytes.
        gcm (cipher "gcm", key: the 32-byte data key): the session the Python GcmStore began:
        (meta_key, note_key, mac_key, uuid, salt, next, nonce_reserved, nonce_flushed, seqid,
        note_seq, reserve chunk, nonce limit, doubtful as native u64 pairs, mac template, header
        template); the keys are
        copied into locked memory and the writable buffers overwritten."""
    def read(self, offset: int, length: int) -> bytearray:
        """Exactly ``length`` bytes; the range must lie inside the volume (UsageError)."""
    def readinto(self, offset: int, buf: Buffer) -> None: ...
    def write(self, offset: int, data: Buffer) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None:
        """The durability point: every write or discard that returned before is durable."""
    def wipe_key(self) -> None:
        """Wait for calls in flight, wipe the key; later calls raise KeyAccessError. Idempotent."""
    def fail_backing(self, errno: int) -> None:
        """Simulated power loss: after calls in flight, every backing call fails with errno."""
    def set_size(self, size: int) -> None:
        """Grow the volume (the caller grew the file and wrote the header first)."""
    def read_records(self, first: int, n: int) -> list[bytes | None]:
        """Sectors as stored (None for a hole); no lock: the caller holds the volume still."""
    def read_sealed(self, first: int, n: int) -> bytearray:
        """Sectors as a LUKS2 reader expects them: stored ciphertext, holes encrypted zeros."""
    def capture_begin(self, max_kept_bytes: int) -> None:
        """Under the barrier: flush, then preserve old records before writes (StateError if open)."""
    def capture_read(self, first: int, n: int) -> list[bytes | None]:
        """Records at the barrier, consecutive ranges from 0 (StateError once the session failed)."""
    def capture_stats(self) -> dict[str, int]:
        """captured, peak_kept, kept_bytes, failed."""
    def capture_end(self) -> None: ...
    def close_clean(self) -> None:
        """Under the barrier: flush, then (GCM) record a clean session in the header."""
    def kill(self) -> None:
        """Wipe the key with no bookkeeping I/O (a dying process, in the crash tests)."""
    def gcm_grow(self, size: int, mac_template: str, header_template: str) -> None:
        """GCM: grow the volume (new metadata pages, file, header) under the barrier."""
    def gcm_state(self) -> tuple[int, int, int, int]:
        """GCM: (seqid, nonce_reserved, nonce_flushed, next counter)."""
