//! Replication message payload, version 4.
//!
//! Version 4 makes the time batch **compact**: the same 32-byte header (version byte 4), then
//! `count` entries of 1 to 25 bytes, each a tag byte (low nibble: clock code 0..=11 for
//! `clock_gettime` of that clock id, 12 for `gettimeofday`, 15 for the escape; high nibble:
//! the delta's length) and the zigzag delta of the call's value (ns, or µs for
//! `gettimeofday`) against the previous entry of the same clock code in the batch (0 for the
//! first): in the nibble when below 7, else in 1 to 8 little-endian bytes. The escape (tag
//! `0x0F`) is followed by the 24-byte version-3 entry. See [`encode_entry`], [`decode_entry`]
//! and docs/interceptor.md.
//!
//! Version 3 adds the **time batch** (magic [`BATCH_MAGIC`]): one message holding a thread's
//! next successful `clock_gettime`/`gettimeofday` results, in call order, so that a thread that
//! reads the clock often emits one ring record per [`BATCH_CAP`] time calls instead of one per
//! call. A thread flushes its batch before any other message of its own, so per-thread order in
//! the journal is exact; time results have no order relative to other threads' messages.
//!
//! ```text
//! time batch (version 3)
//! off size field
//!  0   1   magic 0xA9
//!  1   1   version (3)
//!  2   2   count n (1..=MAX_BATCH)
//!  4   4   pid
//!  8   4   tid
//! 12   4   reserved (0)
//! 16   8   vtid   (same offset as in the other forms)
//! 24   8   tseq of the first entry (entry i is call number tseq + i)
//! 32 24*n  entries: { a0 as i32 (clock id), kind u16 (10 or 11), reserved u16 (0), data[16] }
//! ```
//!
//! Every finished intercepted call becomes one message: a fixed 64-byte header followed by
//! `data_len` bytes of call data (what the call gave the process: bytes read, a timespec, random
//! bytes, revents...). Outputs carry only a digest of what was written.
//!
//! Version 2 adds the **compact time message** (magic [`COMPACT_MAGIC`], 48 bytes) for the most
//! frequent call of servers, a successful `clock_gettime`/`gettimeofday` that filled 16 bytes:
//! no `ret` (0), `a1`, `a2` (0) and `data_len` (16) fields, and a 32-bit clock id, so that the
//! message plus the ring's 16-byte record header fill exactly one 64-byte cache line instead of
//! 96 bytes. It decodes to the same [`Header`] and data as the full form.
//!
//! ```text
//! compact time message (version 2)
//! off size field
//!  0   1   magic 0xA8
//!  1   1   version (2)
//!  2   2   kind (ClockGettime or Gettimeofday only)
//!  4   4   pid
//!  8   4   tid
//! 12   4   a0 as i32 (clock id; sign-extended to 64 bits when decoded)
//! 16   8   vtid   (same offset as in the full form)
//! 24   8   tseq
//! 32  16   data   (the timespec or timeval)
//! ```
//!
//! ```text
//! off size field
//!  0   1   magic 0xA7
//!  1   1   version (1)
//!  2   2   kind (Kind)
//!  4   4   pid   real pid at record time (reports only)
//!  8   4   tid   real tid at record time (reports only)
//! 12   4   data_len
//! 16   8   vtid  deterministic thread name (crate::vtid)
//! 24   8   tseq  per-thread call number, from 1
//! 32   8   ret   result, syscall convention (negative errno) or pthread error code
//! 40   8   a0    call-specific (fd, clock id, signal, status...)
//! 48   8   a1    call-specific (requested length, flags...)
//! 56   8   a2    call-specific (digest of output bytes...)
//! 64   ..  data
//! ```
//! Integrity is the carrier's job (the ring is shared memory; the journal has a CRC per record).
//!
//! Version rules: a decoder accepts exactly the versions it knows (today: 1 to 4; version 1 is
//! version 2 without the compact form, version 2 is version 3 without the time batch, version
//! 3 is version 4 with 24-byte batch entries only (a batch's version byte says which entry form
//! it holds), so older journals still decode; a compact message marked 1 or a batch marked 1
//! or 2 is refused). Adding a `Kind` or
//! giving meaning to a spare field bumps the version; a reader meeting a newer version refuses
//! with [`MsgError::Version`] rather than guessing.

/// First byte of every full message.
pub const MAGIC: u8 = 0xA7;
/// First byte of a compact time message (version 2).
pub const COMPACT_MAGIC: u8 = 0xA8;
/// Bytes of a compact time message.
pub const COMPACT_LEN: usize = 48;
/// First byte of a time batch (version 3).
pub const BATCH_MAGIC: u8 = 0xA9;
/// Bytes of a time batch's own header.
pub const BATCH_HEADER: usize = 32;
/// Bytes of one time batch entry.
pub const BATCH_ENTRY: usize = 24;
/// Most entries the decoder accepts in one time batch.
pub const MAX_BATCH: usize = 256;
/// Entries the interceptor buffers per thread before it emits a batch.
pub const BATCH_CAP: usize = 32;
/// Current message version (written by this build).
pub const VERSION: u8 = 4;
/// Oldest message version this build still reads.
pub const MIN_VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Largest `data_len` accepted by the decoder (the journal's default payload cap).
pub const MAX_DATA: usize = (16 << 20) - HEADER_LEN;
/// Largest read the interceptor asks the kernel for in record mode: a longer `read` or
/// `recvfrom` on a stream is shortened (a short read is always allowed there), so one message
/// stays well below the ring's and the journal's caps.
pub const MAX_READ: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsgError {
    #[error("message of {0} bytes is shorter than its 64-byte header")]
    Short(usize),
    #[error("bad message magic {0:#04x}")]
    Magic(u8),
    #[error("message version {0} is not supported (this build reads versions {MIN_VERSION} to {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u16),
    #[error("message data length {declared} does not match the {actual} bytes present")]
    Length { declared: usize, actual: usize },
    #[error("compact time message of {len} bytes (kind {kind}): must be {COMPACT_LEN} bytes of version 2 or later and kind clock_gettime or gettimeofday")]
    Compact { kind: u16, len: usize },
    #[error("time batch of {len} bytes: {why}")]
    Batch { len: usize, why: &'static str },
}

macro_rules! kinds {
    ($($name:ident = $v:expr, $s:expr;)*) => {
        /// What call a message records.
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind { $($name = $v,)* }
        impl Kind {
            pub fn from_u16(v: u16) -> Option<Self> {
                match v { $($v => Some(Self::$name),)* _ => None }
            }
            /// The libc name of the call.
            pub fn name(self) -> &'static str {
                match self { $(Self::$name => $s,)* }
            }
        }
    };
}

kinds! {
    ProcStart = 1, "process-start";
    Exit = 2, "exit";
    ClockGettime = 10, "clock_gettime";
    Gettimeofday = 11, "gettimeofday";
    Time = 12, "time";
    Getrandom = 13, "getrandom";
    Getentropy = 14, "getentropy";
    Read = 20, "read";
    Readv = 21, "readv";
    Recvfrom = 22, "recvfrom";
    Recvmsg = 23, "recvmsg";
    Write = 30, "write";
    Writev = 31, "writev";
    Sendto = 32, "sendto";
    Sendmsg = 33, "sendmsg";
    Poll = 40, "poll";
    Select = 41, "select";
    EpollWait = 42, "epoll_wait";
    Accept = 50, "accept";
    Connect = 51, "connect";
    Fork = 60, "fork";
    Wait = 61, "wait";
    ThreadCreate = 62, "pthread_create";
    MutexLock = 70, "pthread_mutex_lock";
    MutexTrylock = 71, "pthread_mutex_trylock";
    CondWait = 72, "pthread_cond_wait";
    RwlockRead = 75, "pthread_rwlock_rdlock";
    RwlockWrite = 76, "pthread_rwlock_wrlock";
    Signal = 80, "signal";
    TimeBatch = 90, "time batch";
}

/// The fixed part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub pid: u32,
    pub tid: u32,
    pub data_len: u32,
    pub vtid: u64,
    pub tseq: u64,
    pub ret: i64,
    pub a0: u64,
    pub a1: u64,
    pub a2: u64,
}

impl Header {
    /// Write the header into `out[..64]` (no allocation: used on the interceptor's fast path).
    #[inline]
    pub fn encode_into(&self, out: &mut [u8]) {
        // One bounds check for the whole header instead of one per field.
        let out: &mut [u8; HEADER_LEN] = (&mut out[..HEADER_LEN])
            .try_into()
            .expect("header slice is HEADER_LEN long");
        out[0] = MAGIC;
        out[1] = VERSION;
        out[2..4].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[4..8].copy_from_slice(&self.pid.to_le_bytes());
        out[8..12].copy_from_slice(&self.tid.to_le_bytes());
        out[12..16].copy_from_slice(&self.data_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.vtid.to_le_bytes());
        out[24..32].copy_from_slice(&self.tseq.to_le_bytes());
        out[32..40].copy_from_slice(&self.ret.to_le_bytes());
        out[40..48].copy_from_slice(&self.a0.to_le_bytes());
        out[48..56].copy_from_slice(&self.a1.to_le_bytes());
        out[56..64].copy_from_slice(&self.a2.to_le_bytes());
    }

    /// Whether this call can be recorded as a compact time message (see the module docs):
    /// a successful `clock_gettime`/`gettimeofday` with 16 bytes of data, `a1 = a2 = 0` and a
    /// clock id that survives the 32-bit round trip.
    #[inline]
    pub fn compact_fits(kind: Kind, ret: i64, a0: u64, a1: u64, a2: u64, data_len: usize) -> bool {
        matches!(kind, Kind::ClockGettime | Kind::Gettimeofday)
            && ret == 0
            && a1 == 0
            && a2 == 0
            && data_len == 16
            && i32::try_from(i64::from_le_bytes(a0.to_le_bytes())).is_ok()
    }

    /// Write the compact form of this header and its 16 data bytes into `out[..48]`. The caller
    /// checked [`Header::compact_fits`].
    #[inline]
    pub fn encode_compact_into(&self, out: &mut [u8], data: &[u8; 16]) {
        let out: &mut [u8; COMPACT_LEN] = (&mut out[..COMPACT_LEN])
            .try_into()
            .expect("compact slice is COMPACT_LEN long");
        out[0] = COMPACT_MAGIC;
        out[1] = VERSION;
        out[2..4].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[4..8].copy_from_slice(&self.pid.to_le_bytes());
        out[8..12].copy_from_slice(&self.tid.to_le_bytes());
        // The low 32 bits: compact_fits checked that a0 is a sign-extended i32.
        out[12..16].copy_from_slice(&self.a0.to_le_bytes()[..4]);
        out[16..24].copy_from_slice(&self.vtid.to_le_bytes());
        out[24..32].copy_from_slice(&self.tseq.to_le_bytes());
        out[32..48].copy_from_slice(data);
    }

    /// [`Header::encode_compact_into`] from the parts of the header a compact message keeps,
    /// written as six little-endian words (the interceptor's hot path; same bytes, tested by
    /// `compact_parts_equal_compact_into`). The caller checked [`Header::compact_fits`].
    #[inline(always)]
    pub fn encode_compact_parts(out: &mut [u8], p: &CompactParts, data: &[u8; 16]) {
        let out: &mut [u8; COMPACT_LEN] = (&mut out[..COMPACT_LEN])
            .try_into()
            .expect("compact slice is COMPACT_LEN long");
        let w0 = u64::from(COMPACT_MAGIC)
            | u64::from(VERSION) << 8
            | u64::from(p.kind as u16) << 16
            | u64::from(p.pid) << 32;
        // The low 32 bits of a0: compact_fits checked that it is a sign-extended i32.
        let w1 = u64::from(p.tid) | p.a0 << 32;
        out[0..8].copy_from_slice(&w0.to_le_bytes());
        out[8..16].copy_from_slice(&w1.to_le_bytes());
        out[16..24].copy_from_slice(&p.vtid.to_le_bytes());
        out[24..32].copy_from_slice(&p.tseq.to_le_bytes());
        out[32..48].copy_from_slice(data);
    }

    /// Encode header and data into a new buffer, in the compact form when
    /// [`Header::compact_fits`] allows it (what the interceptor writes).
    pub fn encode_auto(&self, data: &[u8]) -> Vec<u8> {
        if let Ok(d16) = <&[u8; 16]>::try_from(data) {
            if Self::compact_fits(self.kind, self.ret, self.a0, self.a1, self.a2, 16) {
                let mut v = vec![0u8; COMPACT_LEN];
                self.encode_compact_into(&mut v, d16);
                return v;
            }
        }
        self.encode(data)
    }

    /// Encode header and data into a new buffer (full form).
    pub fn encode(&self, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN + data.len()];
        let mut h = *self;
        h.data_len = u32::try_from(data.len()).expect("message data fits u32");
        h.encode_into(&mut v);
        v[HEADER_LEN..].copy_from_slice(data);
        v
    }
}

/// The fields a compact time message keeps (see [`Header::encode_compact_parts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactParts {
    pub kind: Kind,
    pub pid: u32,
    pub tid: u32,
    pub a0: u64,
    pub vtid: u64,
    pub tseq: u64,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Decode a compact time message (magic checked by the caller).
fn decode_compact(b: &[u8]) -> Result<(Header, &[u8]), MsgError> {
    if b.len() < 4 {
        return Err(MsgError::Short(b.len()));
    }
    if !(2..=VERSION).contains(&b[1]) {
        return Err(MsgError::Version(b[1]));
    }
    let k = u16::from_le_bytes([b[2], b[3]]);
    let kind = match Kind::from_u16(k) {
        Some(kind @ (Kind::ClockGettime | Kind::Gettimeofday)) if b.len() == COMPACT_LEN => kind,
        _ => {
            return Err(MsgError::Compact {
                kind: k,
                len: b.len(),
            })
        }
    };
    let h = Header {
        kind,
        pid: u32_at(b, 4),
        tid: u32_at(b, 8),
        data_len: 16,
        vtid: u64_at(b, 16),
        tseq: u64_at(b, 24),
        ret: 0,
        // The clock id was stored as an i32: sign-extend it back.
        a0: u64::from_le_bytes(
            i64::from(i32::from_le_bytes([b[12], b[13], b[14], b[15]])).to_le_bytes(),
        ),
        a1: 0,
        a2: 0,
    };
    Ok((h, &b[32..COMPACT_LEN]))
}

/// One call of a time batch: which call, its clock id (`a0`, as in the full form) and the
/// 16 bytes it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub kind: Kind,
    pub a0: u64,
    pub data: [u8; 16],
}

impl TimeEntry {
    /// The entry as the three little-endian words the interceptor buffers and writes (the
    /// caller checked [`Header::compact_fits`]: the clock id survives the 32-bit round trip).
    #[inline(always)]
    pub fn words(kind: Kind, a0: u64, data: &[u8; 16]) -> [u64; 3] {
        let (lo, hi) = data.split_at(8);
        Self::words_of(
            kind,
            a0,
            u64::from_le_bytes(lo.try_into().expect("8 bytes")),
            u64::from_le_bytes(hi.try_into().expect("8 bytes")),
        )
    }

    /// [`TimeEntry::words`] from the 16 data bytes given as two little-endian words.
    #[inline(always)]
    pub fn words_of(kind: Kind, a0: u64, lo: u64, hi: u64) -> [u64; 3] {
        [(a0 & 0xffff_ffff) | u64::from(kind as u16) << 32, lo, hi]
    }
}

/// Bytes of a version-3 time batch of `n` entries.
#[inline(always)]
pub const fn batch_len(n: usize) -> usize {
    BATCH_HEADER + n * BATCH_ENTRY
}

/// Write a version-3 time batch of `n` entries (24 bytes each) into `out[..batch_len(n)]`,
/// entry `i` given by `word(i)` as made by [`TimeEntry::words`] (`1 <= n <= MAX_BATCH`). This
/// build writes version 4 ([`encode_batch_compact`]); version 3 stays for tests and tools that
/// make older journals.
pub fn encode_batch_v3_with(
    out: &mut [u8],
    pid: u32,
    tid: u32,
    vtid: u64,
    tseq: u64,
    n: usize,
    word: impl Fn(usize) -> [u64; 3],
) {
    let out = &mut out[..batch_len(n)];
    encode_batch_header(out, 3, pid, tid, vtid, tseq, n);
    for (i, e) in out[BATCH_HEADER..]
        .chunks_exact_mut(BATCH_ENTRY)
        .enumerate()
    {
        let w = word(i);
        e[0..8].copy_from_slice(&w[0].to_le_bytes());
        e[8..16].copy_from_slice(&w[1].to_le_bytes());
        e[16..24].copy_from_slice(&w[2].to_le_bytes());
    }
}

/// The 32-byte header of a time batch of `n` entries into `out[..32]`.
#[inline(always)]
pub fn encode_batch_header(
    out: &mut [u8],
    version: u8,
    pid: u32,
    tid: u32,
    vtid: u64,
    tseq: u64,
    n: usize,
) {
    let w0 = u64::from(BATCH_MAGIC)
        | u64::from(version) << 8
        | u64::from(u16::try_from(n).expect("batch count fits u16")) << 16
        | u64::from(pid) << 32;
    out[0..8].copy_from_slice(&w0.to_le_bytes());
    out[8..16].copy_from_slice(&u64::from(tid).to_le_bytes());
    out[16..24].copy_from_slice(&vtid.to_le_bytes());
    out[24..32].copy_from_slice(&tseq.to_le_bytes());
}

/// Encode a version-3 time batch into a new buffer (for tests and tools making old journals).
pub fn encode_batch_v3(pid: u32, tid: u32, vtid: u64, tseq: u64, entries: &[TimeEntry]) -> Vec<u8> {
    let words: Vec<[u64; 3]> = entries
        .iter()
        .map(|e| TimeEntry::words(e.kind, e.a0, &e.data))
        .collect();
    let mut v = vec![0u8; batch_len(words.len())];
    encode_batch_v3_with(&mut v, pid, tid, vtid, tseq, words.len(), |i| words[i]);
    v
}

/// Encode a time batch in this build's form (version 4, compact) into a new buffer (reference
/// form for tests and tools).
pub fn encode_batch(pid: u32, tid: u32, vtid: u64, tseq: u64, entries: &[TimeEntry]) -> Vec<u8> {
    let mut v = vec![0u8; batch_max_len(entries.len())];
    let n = encode_batch_compact(&mut v, pid, tid, vtid, tseq, entries.len(), |i| {
        TimeEntry::words(entries[i].kind, entries[i].a0, &entries[i].data)
    });
    v.truncate(n);
    v
}

// ---- The compact time batch (version 4) ----

/// Clock code of a compact entry for `gettimeofday` (`0..=11`: `clock_gettime` of that clock id).
pub const CODE_GTOD: u8 = 12;
/// Clock code of an escaped compact entry: the 24-byte version-3 entry follows its tag.
pub const CODE_ESCAPE: u8 = 15;
/// Clock codes that carry a delta (0..=12).
pub const CODES: usize = 13;
/// Most bytes of one compact entry (an escaped one: its tag and the 24-byte form).
pub const BATCH_ENTRY_MAX: usize = 1 + BATCH_ENTRY;
const NS_PER_S: i64 = 1_000_000_000;
const US_PER_S: i64 = 1_000_000;

/// Most bytes of a compact (version 4) time batch of `n` entries.
#[inline(always)]
pub const fn batch_max_len(n: usize) -> usize {
    BATCH_HEADER + n * BATCH_ENTRY_MAX
}

/// The running state of a compact batch's encoder and decoder: per clock code, the value of
/// its last delta-coded entry in the clock's unit (ns, or µs for `gettimeofday`), 0 at the
/// start of every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaRefs([i64; CODES]);

#[inline(always)]
#[allow(clippy::cast_sign_loss)] // zigzag: the sign moves into bit 0
fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

#[inline(always)]
#[allow(clippy::cast_possible_wrap)] // inverse of `zigzag`
fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

#[inline(always)]
fn i64_of(w: u64) -> i64 {
    i64::from_le_bytes(w.to_le_bytes())
}

/// The clock code and unit of a call that has one (`None`: the escape form).
#[inline(always)]
pub fn clock_code(kind: Kind, a0: u64) -> Option<(u8, i64)> {
    match kind {
        // `a0` < 12: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        Kind::ClockGettime if a0 < u64::from(CODE_GTOD) => Some((a0 as u8, NS_PER_S)),
        Kind::Gettimeofday if a0 == 0 => Some((CODE_GTOD, US_PER_S)),
        _ => None,
    }
}

/// The delta of a call with a clock code: its value `v` in the clock's unit (`sec * unit +
/// sub`) and the zigzag of `v - prev`; `None` (the escape form) when `sub` is outside
/// `0..unit` or a value or the delta does not fit an `i64`.
#[inline(always)]
pub fn time_delta(unit: i64, sec: i64, sub: i64, prev: i64) -> Option<(i64, u64)> {
    if !(0..unit).contains(&sub) {
        return None;
    }
    let v = sec.checked_mul(unit)?.checked_add(sub)?;
    Some((v, zigzag(v.checked_sub(prev)?)))
}

/// The tag byte and length of a delta entry of clock `code` with zigzag delta `z`: `z` in
/// the tag's high nibble if below 7, else the nibble `6 + k` and `z` in the `k` (1..=8)
/// little-endian bytes after the tag (the writer may store all 8 bytes of `z` there and keep
/// only the entry's length).
#[inline(always)]
pub fn delta_tag(code: u8, z: u64) -> (u8, usize) {
    if z < 7 {
        // z < 7: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        return (code | (z as u8) << 4, 1);
    }
    // z >= 7: its highest set bit `b` (2..=63) makes `k` = 1 + b / 8 bytes (1..=8), i.e.
    // nibble 7 + b / 8 and length 2 + b / 8 (a `bsr` and a shift, no subtraction chain).
    let b8 = (63 - z.leading_zeros()) / 8;
    // b8 <= 7: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let nibble = 7 + b8 as u8;
    (code | nibble << 4, 2 + b8 as usize)
}

/// Append one entry, given as [`TimeEntry::words`], to a compact batch at `out[0..]` (at least
/// [`BATCH_ENTRY_MAX`] bytes); returns the bytes written. Delta form when [`clock_code`] and
/// [`time_delta`] allow it; the escape otherwise (which leaves `refs` as they are).
#[inline]
pub fn encode_entry(refs: &mut DeltaRefs, w: [u64; 3], out: &mut [u8]) -> usize {
    let out: &mut [u8; BATCH_ENTRY_MAX] = (&mut out[..BATCH_ENTRY_MAX])
        .try_into()
        .expect("entry slice is BATCH_ENTRY_MAX long");
    let kind = Kind::from_u16(u16::try_from(w[0] >> 32).unwrap_or(0));
    let a0 = u64::from_le_bytes(i64::from(i32::from_le_bytes(low4(w[0]))).to_le_bytes());
    if let Some((code, unit)) = kind.and_then(|k| clock_code(k, a0)) {
        let ci = usize::from(code);
        if let Some((v, z)) = time_delta(unit, i64_of(w[1]), i64_of(w[2]), refs.0[ci]) {
            refs.0[ci] = v;
            let (tag, len) = delta_tag(code, z);
            out[0] = tag;
            out[1..9].copy_from_slice(&z.to_le_bytes());
            return len;
        }
    }
    out[0] = CODE_ESCAPE;
    out[1..9].copy_from_slice(&w[0].to_le_bytes());
    out[9..17].copy_from_slice(&w[1].to_le_bytes());
    out[17..25].copy_from_slice(&w[2].to_le_bytes());
    BATCH_ENTRY_MAX
}

fn low4(w: u64) -> [u8; 4] {
    let b = w.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// Write a compact (version 4) time batch of `n` entries into `out` (at least
/// [`batch_max_len`]`(n)` bytes), entry `i` given by `word(i)` as made by
/// [`TimeEntry::words`] (`1 <= n <= MAX_BATCH`); returns its length. No allocation: the
/// interceptor's flush encodes from its per-thread buffer.
#[inline]
pub fn encode_batch_compact(
    out: &mut [u8],
    pid: u32,
    tid: u32,
    vtid: u64,
    tseq: u64,
    n: usize,
    word: impl Fn(usize) -> [u64; 3],
) -> usize {
    encode_batch_header(out, VERSION, pid, tid, vtid, tseq, n);
    let mut refs = DeltaRefs::default();
    let mut o = BATCH_HEADER;
    for i in 0..n {
        o += encode_entry(&mut refs, word(i), &mut out[o..]);
    }
    o
}

/// Write a compact (version 4) time batch into `out[..BATCH_HEADER + entries.len()]` whose `n`
/// entries are given already encoded (by [`encode_entry`], or as the interceptor appends them
/// at call time with [`clock_code`], [`time_delta`] and [`delta_tag`]).
#[inline]
pub fn encode_batch_compact_raw(
    out: &mut [u8],
    pid: u32,
    tid: u32,
    vtid: u64,
    tseq: u64,
    n: usize,
    entries: &[u8],
) {
    encode_batch_header(out, VERSION, pid, tid, vtid, tseq, n);
    out[BATCH_HEADER..BATCH_HEADER + entries.len()].copy_from_slice(entries);
}

/// A version-3 entry (24 bytes), checked.
fn entry_v3(e: &[u8]) -> Result<TimeEntry, &'static str> {
    let k = u16::from_le_bytes([e[4], e[5]]);
    let kind = match Kind::from_u16(k) {
        Some(kind @ (Kind::ClockGettime | Kind::Gettimeofday)) if e[6] == 0 && e[7] == 0 => kind,
        _ => return Err("an entry is not a clock_gettime or gettimeofday result"),
    };
    let a0 =
        u64::from_le_bytes(i64::from(i32::from_le_bytes([e[0], e[1], e[2], e[3]])).to_le_bytes());
    let mut data = [0u8; 16];
    data.copy_from_slice(&e[8..24]);
    Ok(TimeEntry { kind, a0, data })
}

/// Decode one compact entry from the start of `b`: the entry and its length. Bounded: at most
/// [`BATCH_ENTRY_MAX`] bytes are looked at; a delta cut short or not in its shortest form, a
/// length nibble of 15, a delta that overflows and an unknown clock code are refused.
pub fn decode_entry(refs: &mut DeltaRefs, b: &[u8]) -> Result<(TimeEntry, usize), &'static str> {
    let tag = *b.first().ok_or("an entry is cut short")?;
    let c = tag & 0x0f;
    if c == CODE_ESCAPE {
        if tag != CODE_ESCAPE {
            return Err("an escaped entry's tag has bits set beyond its clock code");
        }
        let e = b
            .get(1..BATCH_ENTRY_MAX)
            .ok_or("an escaped entry is cut short")?;
        return Ok((entry_v3(e)?, BATCH_ENTRY_MAX));
    }
    let (kind, a0, unit) = match c {
        0..=11 => (Kind::ClockGettime, u64::from(c), NS_PER_S),
        CODE_GTOD => (Kind::Gettimeofday, 0, US_PER_S),
        _ => return Err("an entry has an unknown clock code"),
    };
    let m = tag >> 4;
    let (z, n) = if m < 7 {
        (u64::from(m), 1)
    } else {
        if m == 15 {
            return Err("an entry's length nibble is 15");
        }
        let k = usize::from(m - 6);
        let bytes = b.get(1..=k).ok_or("an entry's delta is cut short")?;
        let mut le = [0u8; 8];
        le[..k].copy_from_slice(bytes);
        let z = u64::from_le_bytes(le);
        if z < 7 || bytes[k - 1] == 0 {
            return Err("an entry's delta is not in its shortest form");
        }
        (z, 1 + k)
    };
    let ci = usize::from(c);
    let v = refs.0[ci]
        .checked_add(unzigzag(z))
        .ok_or("an entry's delta overflows")?;
    refs.0[ci] = v;
    let mut data = [0u8; 16];
    data[..8].copy_from_slice(&v.div_euclid(unit).to_le_bytes());
    data[8..].copy_from_slice(&v.rem_euclid(unit).to_le_bytes());
    Ok((TimeEntry { kind, a0, data }, n))
}

/// Reads the entries of a decoded time batch (either version) one after the other: what
/// replay and the tools use (a compact entry depends on the ones before it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCursor {
    pos: usize,
    compact: bool,
    refs: DeltaRefs,
}

impl BatchCursor {
    /// At the first entry of the batch whose header [`decode`] returned.
    pub fn new(h: &Header) -> Self {
        Self {
            pos: 0,
            compact: h.a1 >= 4,
            refs: DeltaRefs::default(),
        }
    }

    /// The next entry of the batch whose data (entries) [`decode`] returned; `None` past the
    /// end (the decoder already checked every entry).
    pub fn next_entry(&mut self, data: &[u8]) -> Option<TimeEntry> {
        let rest = data.get(self.pos..).filter(|r| !r.is_empty())?;
        if self.compact {
            let (e, n) = decode_entry(&mut self.refs, rest).ok()?;
            self.pos += n;
            Some(e)
        } else {
            let e = entry_v3(rest.get(..BATCH_ENTRY)?).ok()?;
            self.pos += BATCH_ENTRY;
            Some(e)
        }
    }
}

/// The entries of a decoded time batch, in call order.
pub fn batch_entries<'a>(h: &Header, data: &'a [u8]) -> impl Iterator<Item = TimeEntry> + 'a {
    let mut c = BatchCursor::new(h);
    std::iter::from_fn(move || c.next_entry(data))
}

impl Header {
    /// For a time batch header: the header of its `i`-th call as a single message would carry
    /// it (kind, clock id, call number, result 0, 16 bytes of data).
    pub fn batch_call(&self, e: &TimeEntry, i: usize) -> Header {
        Header {
            kind: e.kind,
            pid: self.pid,
            tid: self.tid,
            data_len: 16,
            vtid: self.vtid,
            tseq: self.tseq + i as u64,
            ret: 0,
            a0: e.a0,
            a1: 0,
            a2: 0,
        }
    }
}

/// Decode a time batch (magic checked by the caller). The header's `kind` is
/// [`Kind::TimeBatch`], `a0` the entry count, `a1` the batch's version (3: 24-byte entries,
/// 4: compact), `tseq` the first entry's call number; the data are the entries, read with
/// [`BatchCursor`] or [`batch_entries`]. Every entry is checked here.
fn decode_batch(b: &[u8]) -> Result<(Header, &[u8]), MsgError> {
    let bad = |why| MsgError::Batch { len: b.len(), why };
    if b.len() < BATCH_HEADER {
        return Err(bad("shorter than its 32-byte header"));
    }
    let version = b[1];
    if !(3..=VERSION).contains(&version) {
        return Err(MsgError::Version(version));
    }
    let n = usize::from(u16::from_le_bytes([b[2], b[3]]));
    if n == 0 || n > MAX_BATCH {
        return Err(bad("entry count out of range 1..=256"));
    }
    let data = &b[BATCH_HEADER..];
    if version == 3 {
        if b.len() != batch_len(n) {
            return Err(bad("length does not match its entry count"));
        }
        for e in data.chunks_exact(BATCH_ENTRY) {
            entry_v3(e).map_err(bad)?;
        }
    } else {
        if data.len() > n * BATCH_ENTRY_MAX {
            return Err(bad("longer than its entry count allows"));
        }
        let (mut refs, mut pos) = (DeltaRefs::default(), 0);
        for _ in 0..n {
            let rest = data
                .get(pos..)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad("fewer entries than its count"))?;
            pos += decode_entry(&mut refs, rest).map_err(bad)?.1;
        }
        if pos != data.len() {
            return Err(bad("bytes after its last entry"));
        }
    }
    let h = Header {
        kind: Kind::TimeBatch,
        pid: u32_at(b, 4),
        tid: u32_at(b, 8),
        data_len: u32::try_from(data.len()).expect("batch fits u32"),
        vtid: u64_at(b, 16),
        tseq: u64_at(b, 24),
        ret: 0,
        a0: n as u64,
        a1: u64::from(version),
        a2: 0,
    };
    Ok((h, data))
}

/// Decode a message (full, compact or batch form): its header and a borrowed slice of its
/// data.
pub fn decode(b: &[u8]) -> Result<(Header, &[u8]), MsgError> {
    if b.first() == Some(&COMPACT_MAGIC) {
        return decode_compact(b);
    }
    if b.first() == Some(&BATCH_MAGIC) {
        return decode_batch(b);
    }
    if b.len() < HEADER_LEN {
        return Err(MsgError::Short(b.len()));
    }
    if b[0] != MAGIC {
        return Err(MsgError::Magic(b[0]));
    }
    if !(MIN_VERSION..=VERSION).contains(&b[1]) {
        return Err(MsgError::Version(b[1]));
    }
    let k = u16::from_le_bytes([b[2], b[3]]);
    let kind = Kind::from_u16(k)
        .filter(|k| *k != Kind::TimeBatch)
        .ok_or(MsgError::Kind(k))?;
    let data_len = u32_at(b, 12);
    let actual = b.len() - HEADER_LEN;
    if data_len as usize != actual || actual > MAX_DATA {
        return Err(MsgError::Length {
            declared: data_len as usize,
            actual,
        });
    }
    let h = Header {
        kind,
        pid: u32_at(b, 4),
        tid: u32_at(b, 8),
        data_len,
        vtid: u64_at(b, 16),
        tseq: u64_at(b, 24),
        ret: i64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
        a0: u64_at(b, 40),
        a1: u64_at(b, 48),
        a2: u64_at(b, 56),
    };
    Ok((h, &b[HEADER_LEN..]))
}

impl std::fmt::Display for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.kind.name();
        match self.kind {
            Kind::Read | Kind::Readv | Kind::Recvfrom | Kind::Recvmsg => {
                write!(f, "{n}(fd {}, {} bytes) = {}", self.a0, self.a1, self.ret)
            }
            Kind::Write | Kind::Writev | Kind::Sendto | Kind::Sendmsg => write!(
                f,
                "{n}(fd {}, {} bytes, digest {:016x}) = {}",
                self.a0, self.a1, self.a2, self.ret
            ),
            Kind::Accept | Kind::Connect => write!(f, "{n}(fd {}) = {}", self.a0, self.ret),
            Kind::ClockGettime => write!(f, "{n}(clock {}) = {}", self.a0, self.ret),
            Kind::TimeBatch => write!(
                f,
                "{n} of {} calls (#{} to #{})",
                self.a0,
                self.tseq,
                (self.tseq + self.a0).saturating_sub(1)
            ),
            Kind::Signal => write!(f, "signal {} delivered", self.a0),
            Kind::Exit => write!(f, "exit({})", self.a0),
            Kind::ProcStart => write!(f, "process start (pid {}, ppid {})", self.a0, self.a1),
            Kind::Wait => write!(
                f,
                "{n}(pid {}) = {} status {:#x}",
                self.a1, self.ret, self.a0
            ),
            _ => write!(f, "{n}(..) = {}", self.ret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(kind in 0usize..29, ret in any::<i64>(), a0 in any::<u64>(), vtid in any::<u64>(),
                     data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kinds = [Kind::ProcStart, Kind::Exit, Kind::ClockGettime, Kind::Gettimeofday, Kind::Time,
                Kind::Getrandom, Kind::Getentropy, Kind::Read, Kind::Readv, Kind::Recvfrom, Kind::Recvmsg,
                Kind::Write, Kind::Writev, Kind::Sendto, Kind::Sendmsg, Kind::Poll, Kind::Select,
                Kind::EpollWait, Kind::Accept, Kind::Connect, Kind::Fork, Kind::Wait, Kind::ThreadCreate,
                Kind::MutexLock, Kind::MutexTrylock, Kind::CondWait, Kind::RwlockRead, Kind::RwlockWrite,
                Kind::Signal];
            let h = Header { kind: kinds[kind], pid: 7, tid: 8, data_len: u32::try_from(data.len()).unwrap(), vtid, tseq: 3, ret, a0, a1: 1, a2: 2 };
            let b = h.encode(&data);
            let (h2, d2) = decode(&b).unwrap();
            prop_assert_eq!(h2, h);
            prop_assert_eq!(d2, data.as_slice());
            prop_assert!(decode(&b[..b.len() - 1]).is_err() || data.is_empty());
        }
    }

    proptest! {
        #[test]
        fn compact_roundtrip(gtod in any::<bool>(), clk in any::<i32>(), pid in any::<u32>(), tid in any::<u32>(),
                             vtid in any::<u64>(), tseq in any::<u64>(), data in any::<[u8; 16]>()) {
            let kind = if gtod { Kind::Gettimeofday } else { Kind::ClockGettime };
            let a0 = u64::from_le_bytes(i64::from(clk).to_le_bytes());
            let h = Header { kind, pid, tid, data_len: 16, vtid, tseq, ret: 0, a0, a1: 0, a2: 0 };
            prop_assert!(Header::compact_fits(kind, 0, a0, 0, 0, 16));
            let b = h.encode_auto(&data);
            prop_assert_eq!(b.len(), COMPACT_LEN);
            prop_assert_eq!(b[0], COMPACT_MAGIC);
            let (h2, d2) = decode(&b).unwrap();
            prop_assert_eq!(h2, h);
            prop_assert_eq!(d2, data.as_slice());
            prop_assert!(decode(&b[..COMPACT_LEN - 1]).is_err());
        }
    }

    proptest! {
        #[test]
        fn compact_parts_equal_compact_into(gtod in any::<bool>(), clk in any::<i32>(), pid in any::<u32>(),
                                            tid in any::<u32>(), vtid in any::<u64>(), tseq in any::<u64>(),
                                            data in any::<[u8; 16]>()) {
            let kind = if gtod { Kind::Gettimeofday } else { Kind::ClockGettime };
            let a0 = u64::from_le_bytes(i64::from(clk).to_le_bytes());
            let h = Header { kind, pid, tid, data_len: 16, vtid, tseq, ret: 0, a0, a1: 0, a2: 0 };
            let mut a = [0u8; COMPACT_LEN];
            let mut b = [0xffu8; COMPACT_LEN];
            h.encode_compact_into(&mut a, &data);
            Header::encode_compact_parts(&mut b, &CompactParts { kind, pid, tid, a0, vtid, tseq }, &data);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn compact_only_where_it_fits() {
        let mut h = Header {
            kind: Kind::ClockGettime,
            pid: 1,
            tid: 2,
            data_len: 16,
            vtid: 3,
            tseq: 4,
            ret: -22,
            a0: 1,
            a1: 0,
            a2: 0,
        };
        // A failed call, a clock id beyond i32, another kind, another length: full form.
        assert_eq!(h.encode_auto(&[7; 16])[0], MAGIC);
        h.ret = 0;
        h.a0 = 1 << 40;
        assert_eq!(h.encode_auto(&[7; 16])[0], MAGIC);
        h.a0 = 1;
        assert_eq!(h.encode_auto(&[7; 8])[0], MAGIC);
        h.kind = Kind::Getrandom;
        assert_eq!(h.encode_auto(&[7; 16])[0], MAGIC);
        h.kind = Kind::Gettimeofday;
        let mut b = h.encode_auto(&[7; 16]);
        assert_eq!(b[0], COMPACT_MAGIC);
        // Version 1 had no compact form; a compact message of another kind is refused.
        b[1] = 1;
        assert_eq!(decode(&b), Err(MsgError::Version(1)));
        b[1] = VERSION;
        b[2] = Kind::Read as u8;
        assert!(matches!(decode(&b), Err(MsgError::Compact { .. })));
        // Full messages of versions 1 to 3 still decode.
        h.kind = Kind::Read;
        let mut f = h.encode(b"ab");
        assert_eq!(f[1], 4);
        for v in [1, 2, 3] {
            f[1] = v;
            assert_eq!(decode(&f).unwrap().1, b"ab");
        }
    }

    fn entry_of(g: bool, clk: i32, data: [u8; 16]) -> TimeEntry {
        TimeEntry {
            kind: if g {
                Kind::Gettimeofday
            } else {
                Kind::ClockGettime
            },
            a0: u64::from_le_bytes(i64::from(clk).to_le_bytes()),
            data,
        }
    }

    fn ts(sec: i64, sub: i64) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&sec.to_le_bytes());
        d[8..].copy_from_slice(&sub.to_le_bytes());
        d
    }

    /// Entry sequences as the property tests draw them: mostly real-looking (clock ids 0..=13
    /// and -6, gettimeofday, normalised times moving forwards and backwards by small and
    /// large steps), with arbitrary bytes, extreme seconds and out-of-range sub-second fields
    /// mixed in.
    fn entries_strategy() -> impl Strategy<Value = Vec<TimeEntry>> {
        let one = (
            any::<bool>(),
            prop_oneof![0i32..14, Just(-6), any::<i32>()],
            prop_oneof![
                4 => (0u8..3, -5_000i64..5_000, 0u64..1 << 40).prop_map(|(how, sec, step)| (how, sec, step)),
                1 => (Just(3u8), any::<i64>(), any::<u64>()),
            ],
            any::<[u8; 16]>(),
        );
        proptest::collection::vec(one, 1..60).prop_map(|v| {
            let mut clock = 1_700_000_000_000_000_000i64;
            v.into_iter()
                .map(|(g, clk, (how, sec, step), raw)| {
                    let unit = if g { US_PER_S } else { NS_PER_S };
                    let data = match how {
                        // Forwards or backwards by up to 2^40 units around a moving clock.
                        0 | 1 => {
                            let d = i64::try_from(step).unwrap();
                            clock = if how == 0 {
                                clock.saturating_add(d)
                            } else {
                                clock.saturating_sub(d)
                            };
                            let v = clock / if g { 1000 } else { 1 };
                            ts(v.div_euclid(unit), v.rem_euclid(unit))
                        }
                        // Small absolute values (monotonic clocks after boot, negative times).
                        2 => ts(
                            sec,
                            i64::try_from(step % u64::try_from(unit).unwrap()).unwrap(),
                        ),
                        // Anything: extreme seconds, sub-second fields out of range.
                        _ => match step % 4 {
                            0 => raw,
                            1 => ts(sec, i64::try_from(step >> 40).unwrap() % unit),
                            2 => ts(i64::MAX / unit, unit - 1),
                            _ => ts(i64::MIN / unit, 0),
                        },
                    };
                    entry_of(g, clk, data)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn batch_roundtrip(pid in any::<u32>(), tid in any::<u32>(), vtid in any::<u64>(), tseq in 0u64..1 << 60,
                           entries in entries_strategy()) {
            let b = encode_batch(pid, tid, vtid, tseq, &entries);
            prop_assert_eq!(b[1], 4);
            prop_assert!(b.len() <= batch_max_len(entries.len()));
            let (h, d) = decode(&b).unwrap();
            prop_assert_eq!(h.kind, Kind::TimeBatch);
            prop_assert_eq!((h.pid, h.tid, h.vtid, h.tseq, h.a0, h.a1), (pid, tid, vtid, tseq, entries.len() as u64, 4));
            // The same calls as the version-3 batch of these entries decodes to.
            let v3 = encode_batch_v3(pid, tid, vtid, tseq, &entries);
            let (h3, d3) = decode(&v3).unwrap();
            prop_assert_eq!((h3.pid, h3.tid, h3.vtid, h3.tseq, h3.a0, h3.a1), (pid, tid, vtid, tseq, entries.len() as u64, 3));
            let got: Vec<TimeEntry> = batch_entries(&h, d).collect();
            let got3: Vec<TimeEntry> = batch_entries(&h3, d3).collect();
            prop_assert_eq!(&got, &entries);
            prop_assert_eq!(&got3, &entries);
            for (i, e) in got.iter().enumerate() {
                // The call as a single message would have carried it.
                let single = h.batch_call(e, i);
                let one = single.encode_auto(&e.data);
                prop_assert_eq!(decode(&one).unwrap(), (single, &e.data[..]));
                prop_assert_eq!(single.tseq, tseq + i as u64);
            }
            // Every cut is refused.
            for cut in [BATCH_HEADER, b.len() - 1] {
                prop_assert!(decode(&b[..cut]).is_err(), "cut at {}", cut);
            }
        }
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)] // z < 7 and 6 + k <= 14: the casts cannot truncate
    fn delta_tag_is_the_shortest_form_at_every_width() {
        for code in [0u8, 1, 12] {
            for z in 0..7u64 {
                assert_eq!(delta_tag(code, z), (code | (z as u8) << 4, 1));
            }
            for b in 2..64u32 {
                for z in [1u64 << b, (1u64 << b) | 1, (1u64 << b) | ((1u64 << b) - 1)] {
                    if z < 7 {
                        continue;
                    }
                    // the form of version 4: k bytes, the fewest that hold z
                    let k = (1..=8u32).find(|&k| k == 8 || z >> (8 * k) == 0).unwrap();
                    let (tag, len) = delta_tag(code, z);
                    assert_eq!(
                        (tag, len),
                        (code | ((6 + k) as u8) << 4, 1 + k as usize),
                        "z {z:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn compact_entries_are_small() {
        // redis' pattern: a gettimeofday and a monotonic clock_gettime per request, ~1 µs apart.
        let mut entries = vec![];
        let (mut real, mut mono) = (1_764_000_000_000_000i64, 36_000_000_000_000i64);
        for i in 0..16 {
            if i % 2 == 0 {
                real += 1;
                entries.push(entry_of(true, 0, ts(real / US_PER_S, real % US_PER_S)));
            } else {
                mono += 700 + i * 37;
                entries.push(entry_of(false, 1, ts(mono / NS_PER_S, mono % NS_PER_S)));
            }
        }
        let b = encode_batch(1, 2, 3, 4, &entries);
        // The first entries against 0 (8 and 7 bytes), then 1 byte per gettimeofday, 3 per
        // clock_gettime 800-1300 ns apart: 32 + 15 + 7 + 21 = 75 bytes instead of 32 + 16 * 24.
        assert_eq!(b.len(), 75, "{b:?}");
        let (h, d) = decode(&b).unwrap();
        assert_eq!(batch_entries(&h, d).collect::<Vec<_>>(), entries);
        // What redis 7 records (`-P 16`): gettimeofday only, 0 or 1 µs apart: 55 bytes.
        let gtod: Vec<TimeEntry> = (0..16)
            .map(|i| {
                let t = real + i / 3;
                entry_of(true, 0, ts(t / US_PER_S, t % US_PER_S))
            })
            .collect();
        let b = encode_batch(1, 2, 3, 4, &gtod);
        assert_eq!(b.len(), 32 + 8 + 15);
        let (h, d) = decode(&b).unwrap();
        assert_eq!(batch_entries(&h, d).collect::<Vec<_>>(), gtod);
        // A CPU-time clock (negative id) and an unused clock id go in the 24-byte form.
        for clk in [-6, 12, 13] {
            let e = entry_of(false, clk, ts(5, 5));
            let b = encode_batch(1, 2, 3, 4, &[e]);
            assert_eq!(b.len(), BATCH_HEADER + BATCH_ENTRY_MAX, "clock {clk}");
            assert_eq!(b[BATCH_HEADER], CODE_ESCAPE);
            let (h, d) = decode(&b).unwrap();
            assert_eq!(batch_entries(&h, d).collect::<Vec<_>>(), vec![e]);
        }
    }

    #[test]
    fn compact_batch_refuses_malformed_input() {
        let e = |sec, nsec| entry_of(false, 1, ts(sec, nsec));
        let good = encode_batch(1, 2, 3, 4, &[e(10, 5), e(10, 900)]);
        let (h, d) = decode(&good).unwrap();
        assert_eq!(batch_entries(&h, d).count(), 2);
        let refused = |b: &[u8], what: &str| match decode(b) {
            Err(MsgError::Batch { why, .. }) => assert!(why.contains(what), "{why} / {what}"),
            other => panic!("{what}: {other:?}"),
        };
        let with = |entries: &[u8], n: u16| {
            let mut b = good[..BATCH_HEADER].to_vec();
            b[2..4].copy_from_slice(&n.to_le_bytes());
            b.extend_from_slice(entries);
            b
        };
        // Count mismatch: fewer entries than counted, more bytes than counted entries.
        refused(&with(&good[BATCH_HEADER..], 3), "fewer entries");
        refused(&with(&good[BATCH_HEADER..], 1), "bytes after");
        refused(&with(&[], 1), "fewer entries");
        // A delta cut short (the nibble says 1 or 8 bytes follow, fewer do).
        refused(&with(&[0x71], 1), "cut short");
        refused(&with(&[0xe1, 1, 2, 3], 1), "cut short");
        // Length nibble 15; deltas not in their shortest form (below 7 in a byte, a last
        // byte of 0).
        refused(&with(&[0xf1, 1], 1), "nibble is 15");
        refused(&with(&[0x71, 0x05], 1), "shortest");
        refused(&with(&[0x81, 0x10, 0x00], 1), "shortest");
        // A delta that overflows: i64::MAX ns against 0 (8 bytes), then +1.
        let mut ovf = vec![0xe1];
        ovf.extend_from_slice(&zigzag(i64::MAX).to_le_bytes());
        let b = with(&ovf, 1);
        let (h, d) = decode(&b).unwrap();
        assert_eq!(
            batch_entries(&h, d).next().unwrap().data,
            ts(i64::MAX / NS_PER_S, i64::MAX % NS_PER_S)
        );
        let mut two = ovf.clone();
        two.push(0x21); // clock 1, z = 2: +1
        refused(&with(&two, 2), "overflows");
        // Unknown clock codes, an escape with bits set, an escape cut short, an escaped
        // entry of another call.
        refused(&with(&[0x0d], 1), "unknown clock code");
        refused(&with(&[0x0e], 1), "unknown clock code");
        let esc = encode_batch(1, 2, 3, 4, &[entry_of(false, -6, ts(1, 2))]);
        assert!(decode(&esc).is_ok());
        let mut b = esc.clone();
        b[BATCH_HEADER] |= 0x10;
        refused(&b, "bits set");
        refused(&esc[..esc.len() - 1], "cut short");
        let mut b = esc.clone();
        b[BATCH_HEADER + 1 + 4] = Kind::Read as u8;
        refused(&b, "not a clock_gettime");
        // More bytes than any batch of that count can hold.
        refused(&with(&[0u8; 2 * BATCH_ENTRY_MAX], 1), "longer than");
    }

    #[test]
    fn v3_encoder_matches_its_layout() {
        let entries: Vec<TimeEntry> = (0..16u8)
            .map(|i| entry_of(i % 2 == 0, i32::from(i), [i; 16]))
            .collect();
        let b = encode_batch_v3(1, 2, 3, 4, &entries);
        assert_eq!(b.len(), batch_len(16));
        assert_eq!(&b[..4], &[BATCH_MAGIC, 3, 16, 0]);
        for (i, e) in b[BATCH_HEADER..].chunks_exact(BATCH_ENTRY).enumerate() {
            assert_eq!(
                &e[..8],
                &TimeEntry::words(entries[i].kind, entries[i].a0, &entries[i].data)[0]
                    .to_le_bytes()
            );
            assert_eq!(&e[8..], &entries[i].data);
        }
    }

    #[test]
    fn batch_refuses_bad_input() {
        let e = TimeEntry {
            kind: Kind::Gettimeofday,
            a0: 0,
            data: [5; 16],
        };
        let good = encode_batch_v3(1, 2, 3, 4, &[e, e]);
        assert!(decode(&good).is_ok());
        // Version 2 had no batch; a newer version is refused.
        for v in [1u8, 2, VERSION + 1] {
            let mut b = good.clone();
            b[1] = v;
            assert_eq!(decode(&b), Err(MsgError::Version(v)));
        }
        // Count 0, count beyond the cap, count not matching the length.
        for n in [0u16, 257, 3] {
            let mut b = good.clone();
            b[2..4].copy_from_slice(&n.to_le_bytes());
            assert!(
                matches!(decode(&b), Err(MsgError::Batch { .. })),
                "count {n}"
            );
        }
        // An entry of another kind.
        let mut b = good.clone();
        b[BATCH_HEADER + BATCH_ENTRY + 4] = Kind::Read as u8;
        assert!(matches!(decode(&b), Err(MsgError::Batch { .. })));
        assert!(matches!(decode(&good[..20]), Err(MsgError::Batch { .. })));
        // The batch kind is not a full-form kind.
        let h = Header {
            kind: Kind::TimeBatch,
            pid: 1,
            tid: 1,
            data_len: 0,
            vtid: 1,
            tseq: 1,
            ret: 0,
            a0: 0,
            a1: 0,
            a2: 0,
        };
        assert_eq!(decode(&h.encode(&[])), Err(MsgError::Kind(90)));
        // A version-2 compact message still decodes.
        let c = Header {
            kind: Kind::ClockGettime,
            ..h
        };
        let mut cb = c.encode_auto(&[1; 16]);
        cb[1] = 2;
        assert!(decode(&cb).is_ok());
    }

    #[test]
    fn refuses_bad_input() {
        let h = Header {
            kind: Kind::Read,
            pid: 1,
            tid: 1,
            data_len: 0,
            vtid: 1,
            tseq: 1,
            ret: 0,
            a0: 0,
            a1: 0,
            a2: 0,
        };
        let mut b = h.encode(b"xy");
        assert_eq!(decode(&b[..10]), Err(MsgError::Short(10)));
        b[1] = 9;
        assert_eq!(decode(&b), Err(MsgError::Version(9)));
        b[1] = VERSION;
        b[2] = 0xff;
        assert!(matches!(decode(&b), Err(MsgError::Kind(_))));
        b[0] = 0;
        assert_eq!(decode(&b), Err(MsgError::Magic(0)));
    }
}
