# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled per-segment loops of the offloads: the TSO split, the GRO run join, the checksum vouch.

Optional: setup.py builds this module with Cython at install (tunnelpy/io/accel.py loads it);
without it segmentation.py and gro.py run their own Python loops, which give the same bytes
(tests/unit/test_offload.py compares the two). _segments.pyi declares the signatures for mypy.

Why compiled: everything else on the data path is batched, but these two loops touch every
segment. In Python they cost ~1.3 µs (split) and ~1.2 µs (coalesce) per 1420-byte segment, as
much as the cipher call itself; numpy did them with fewer instructions and measured no faster
end to end, and mypyc took 12 % off the coalescer's loop (docs/performance.md). Here they are
C loops over the bytes: a struct-and-slice interpreter loop becomes a memcpy and a few stores.

read_packets is Tun.read_batch's loop of reads: per small packet a Python read, a slice and
finish_plain's checksum cost ~2 µs, a third of the sender's time per datagram in a 64-byte UDP
flood (py-spy, bench/profile.sh -u); here it is the read syscall, one sum and one copy.

cut_datagrams cuts a UDP GRO read into its datagrams, as udp.py's loop of slices would (one
tuple and one slice per datagram, ~0.15 µs each in the interpreter).

split_tcp_segments builds split_tcp's segments field for field with split_tcp's arithmetic (the
Python side still parses and checks the super-packet and prepares the header template).

vouch_frames is checksum.l4_vouched for the frames plain VXLAN hands a TAP: the header reads
and the sum of each frame whose checksum is neither partial nor absent. In Python (the reads,
then one numpy sum for the batch) it was 45 % of the receiving daemon's time (bench/profile.sh
with VXLAN=1); here it is a pass over each such frame's L4 bytes.

join_run serves gro.coalesce: after a packet started or continued an open TCP flow it takes every
following packet that the packet-at-a-time loop would also have joined to that flow, up to the
first it would not: same raw length, the same header bytes as the flow's first segment except
IPv4 id and checksum, sequence number, flags, TCP checksum and urgent pointer (the flow key,
plus the length fields), flags ACK or ACK+PSH (PSH ends the run after its segment), the sequence
number continuing, and at most `limit` packets. Their payloads come back joined in one bytes
object: one piece of the GRO write instead of a memoryview per segment.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memcmp, memcpy
from posix.unistd cimport read as c_read


cdef inline unsigned int _be32(const unsigned char* b) noexcept:
    return (<unsigned int>b[0] << 24) | (<unsigned int>b[1] << 16) | (<unsigned int>b[2] << 8) | b[3]


def join_run(
    list packets, Py_ssize_t i, Py_ssize_t limit, bytes first, Py_ssize_t raw,
    Py_ssize_t end, Py_ssize_t l3, Py_ssize_t t, Py_ssize_t h, bint v6,
    unsigned int next_seq, Py_ssize_t gso,
):
    """-> (segments taken, PSH seen, their payloads joined or None).

    `packets[i:limit]` are candidates; `first` the flow's first segment (its header is the
    reference); `raw` the length every taken packet has, `end` where its payload ends (the IP
    length: a TAP frame may be padded beyond it); `l3`, `t`, `h` where the IP header, the TCP
    header and the payload start; `next_seq` the sequence number the flow expects next; `gso`
    the payload size of each taken segment (end - h).
    """
    cdef const unsigned char* a = <const unsigned char*>PyBytes_AS_STRING(first)
    cdef const unsigned char* b
    cdef Py_ssize_t j = i, m, k
    cdef unsigned int seq = next_seq
    cdef unsigned char f
    cdef bint psh = False
    cdef object p
    # C reads below stay inside every packet only if these hold (coalesce guarantees them;
    # checked again because a mistake here would read out of bounds, not raise).
    if (l3 < 0 or t < l3 + 20 or h < t + 20 or gso <= 0 or end - h != gso or end > raw
            or PyBytes_GET_SIZE(first) < h):
        return 0, False, None
    while j < limit:
        p = packets[j]
        if type(p) is not bytes or PyBytes_GET_SIZE(p) != raw:
            break
        b = <const unsigned char*>PyBytes_AS_STRING(p)
        f = b[t + 13]
        if (f | 0x08) != 0x18 or _be32(b + t + 4) != seq:
            break
        if v6:
            if memcmp(a, b, t + 4) != 0:
                break
        elif (memcmp(a, b, l3 + 4) != 0 or memcmp(a + l3 + 6, b + l3 + 6, 4) != 0
              or memcmp(a + l3 + 12, b + l3 + 12, t + 4 - (l3 + 12)) != 0):
            break
        if (memcmp(a + t + 8, b + t + 8, 5) != 0 or memcmp(a + t + 14, b + t + 14, 2) != 0
                or memcmp(a + t + 20, b + t + 20, h - (t + 20)) != 0):
            break
        seq = seq + <unsigned int>gso
        j += 1
        if f & 0x08:
            psh = True
            break
    m = j - i
    if m == 0:
        return 0, False, None
    out = PyBytes_FromStringAndSize(NULL, m * gso)
    cdef char* o = PyBytes_AS_STRING(out)
    for k in range(m):
        memcpy(o + k * gso, PyBytes_AS_STRING(packets[i + k]) + h, gso)
    return m, psh, out


cdef unsigned int _ONE = 1
cdef bint _LITTLE = (<unsigned char*>&_ONE)[0] == 1  # the host's byte order


cdef inline unsigned long long _sum16(const unsigned char* p, Py_ssize_t n) noexcept:
    """A number congruent modulo 0xFFFF to the sum of the big-endian 16-bit words at `p` (an
    odd last byte padded with zero): every caller reduces it modulo 0xFFFF.

    Sixteen bytes per step: each 32-bit half of a 64-bit word is congruent to the sum of its
    two 16-bit words (2^16 = 1 modulo 0xFFFF), and it goes into one of four 64-bit sums,
    which 2^32 halves cannot overflow: no end-around carry to test in the loop, and four
    independent additions per step. 50-61 ns for a 1368-byte payload at -O2 (Debian's
    python3), 36 ns at -O3, against 85-89 ns for one sum of 64-bit words with the carry
    tested each step (bench/c/sum16_cost.c times both loops). Loaded in little-endian
    order each 16-bit word comes byte-swapped, and a swapped word is congruent to 256 times
    the word, so that sum is multiplied by 256 (256 * 256 = 1 modulo 0xFFFF) to give the
    big-endian one (RFC 1071's byte-order independence)."""
    cdef unsigned long long s0 = 0, s1 = 0, s2 = 0, s3 = 0, w, x, s
    cdef unsigned long long be = 0
    cdef Py_ssize_t k = 0
    while k + 16 <= n:
        memcpy(&w, p + k, 8)
        memcpy(&x, p + k + 8, 8)
        s0 += w & 0xFFFFFFFFULL
        s1 += w >> 32
        s2 += x & 0xFFFFFFFFULL
        s3 += x >> 32
        k += 16
    while k + 8 <= n:
        memcpy(&w, p + k, 8)
        s0 += w & 0xFFFFFFFFULL
        s1 += w >> 32
        k += 8
    s = s0 + s1 + s2 + s3
    s %= 0xFFFF
    if _LITTLE:
        s <<= 8
    while k + 1 < n:
        be += (<unsigned int>p[k] << 8) | p[k + 1]
        k += 2
    if k < n:
        be += <unsigned int>p[k] << 8
    return s + be


cdef inline void _put16(unsigned char* p, unsigned int v) noexcept:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


def split_tcp_segments(
    buf, Py_ssize_t h, Py_ssize_t mss, bytes hdr, Py_ssize_t ip, Py_ssize_t tt,
    Py_ssize_t iphl, Py_ssize_t thl, bint v6, unsigned int seq0, unsigned int flags0,
    unsigned int ipid0, unsigned long long ip_sum, unsigned long long base_sum,
):
    """The segments of split_tcp: `hdr` is the header template (frame start to payload) with
    IPv4 length, id and checksum, sequence number, flags and TCP checksum zeroed; `ip_sum` the
    IPv4 header's sum without them, `base_sum` the pseudo-header address/protocol sum plus the
    template TCP header's. Same arithmetic, field for field, as segmentation.split_tcp's loop."""
    cdef const unsigned char[::1] data = buf
    cdef Py_ssize_t end = data.shape[0]
    cdef Py_ssize_t hl = len(hdr)
    cdef const unsigned char* tmpl = <const unsigned char*>PyBytes_AS_STRING(hdr)
    cdef Py_ssize_t n
    cdef Py_ssize_t i, pos = h, plen
    cdef unsigned int seq = seq0, flags, total, ipid
    cdef unsigned long long tsum
    cdef unsigned char* o
    cdef list out = []
    # The writes below land inside each segment's header only if these hold (split_tcp checked
    # them; again here because a mistake would write out of bounds, not raise).
    if mss <= 0 or h > end or ip < 0 or tt + 20 > hl or ip + 12 > tt or h < hl:
        raise ValueError("split_tcp_segments: inconsistent header offsets")
    n = (end - h + mss - 1) // mss
    if n <= 0:
        return out
    cdef const unsigned char* src = &data[0]
    for i in range(n):
        plen = mss if i < n - 1 else end - pos
        if i == n - 1:
            flags = flags0 if i == 0 else flags0 & ~0x80
        elif i == 0:
            flags = flags0 & ~0x09
        else:
            flags = flags0 & ~0x89
        seg = PyBytes_FromStringAndSize(NULL, hl + plen)
        o = <unsigned char*>PyBytes_AS_STRING(seg)
        memcpy(o, tmpl, hl)
        memcpy(o + hl, src + pos, plen)
        tsum = base_sum + thl + plen + (seq >> 16) + (seq & 0xFFFF) + flags + _sum16(src + pos, plen)
        if v6:
            _put16(o + ip + 4, thl + plen)
        else:
            total = iphl + thl + plen
            ipid = (ipid0 + i) & 0xFFFF
            _put16(o + ip + 2, total)
            _put16(o + ip + 4, ipid)
            _put16(o + ip + 10, 0xFFFF - (ip_sum + total + ipid) % 0xFFFF)
        o[tt + 4] = (seq >> 24) & 0xFF
        o[tt + 5] = (seq >> 16) & 0xFF
        o[tt + 6] = (seq >> 8) & 0xFF
        o[tt + 7] = seq & 0xFF
        o[tt + 13] = flags
        _put16(o + tt + 16, 0xFFFF - tsum % 0xFFFF)
        out.append(seg)
        pos += plen
        seq = seq + <unsigned int>mss
    return out


# read_packets' outcomes (tun.py reads them by these numbers).
READ_DRAINED = 0  # the fd would block: everything queued was read
READ_BUDGET = 1  # max_reads reads done, or max_out packets handed on
READ_SUPER = 2  # the last read is a GSO super-packet: value is its length in `buf`
READ_ERROR = 3  # read() failed: value is errno


def read_packets(
    int fd, list out, Py_ssize_t max_reads, Py_ssize_t max_out, bytearray buf, bint vnet,
):
    """Read a non-blocking TUN/TAP fd, as Tun.read_batch's Python loop does, up to `max_reads`
    reads or until `out` holds `max_out` packets -> (reads, outcome, value, short, bad).

    Every read lands in `buf` (as long as the largest read). Without `vnet` each is appended as
    it is. With it (IFF_VNET_HDR) a read of no more than the 10-byte virtio_net_hdr counts in
    `short`; a plain packet (gso_type NONE) is appended without the header, its checksum
    finished when the header says NEEDS_CSUM (checksum.finish_plain's arithmetic; a checksum
    field beyond the packet counts in `bad`); anything else stops the loop (READ_SUPER) and
    stays in `buf`, header included, for segmentation.split (which copies what it keeps: the
    next call reads over it).
    """
    cdef Py_ssize_t reads = 0, short = 0, bad = 0, n, start, at
    cdef Py_ssize_t size = len(buf)
    cdef unsigned long long s
    cdef unsigned int c
    cdef unsigned char* p
    cdef unsigned char* rb
    cdef bytes pkt
    cdef int e
    if size <= 10:
        raise ValueError("read_packets: buffer too small")
    rb = <unsigned char*>PyByteArray_AS_STRING(buf)
    while reads < max_reads and len(out) < max_out:
        n = c_read(fd, rb, size)
        if n < 0:
            e = errno
            if e == EINTR:
                continue
            if e == EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
                return reads, READ_DRAINED, None, short, bad
            return reads, READ_ERROR, e, short, bad
        reads += 1
        if not vnet:
            out.append(PyBytes_FromStringAndSize(<char*>rb, n))
            continue
        if n <= 10:
            short += 1
            continue
        if rb[1] != 0:  # gso_type not NONE (or with the ECN bit): split in Python
            return reads, READ_SUPER, n, short, bad
        if not rb[0] & 1:  # no VIRTIO_NET_HDR_F_NEEDS_CSUM
            out.append(PyBytes_FromStringAndSize(<char*>rb + 10, n - 10))
            continue
        start = 10 + (<Py_ssize_t>rb[6] | <Py_ssize_t>rb[7] << 8)
        at = start + (<Py_ssize_t>rb[8] | <Py_ssize_t>rb[9] << 8)
        if at + 2 > n:
            bad += 1
            continue
        # The field holds the pseudo-header sum; the sum from csum_start on includes it.
        s = _sum16(rb + start, n - start)
        c = 0xFFFF - <unsigned int>(s % 0xFFFF)
        pkt = PyBytes_FromStringAndSize(<char*>rb + 10, n - 10)
        p = <unsigned char*>PyBytes_AS_STRING(pkt)
        _put16(p + at - 10, c)
        out.append(pkt)
    return reads, READ_BUDGET, None, short, bad


def cut_datagrams(bytes data, Py_ssize_t size, object origin, list out):
    """Append (datagram, origin) to `out` for each `size`-byte piece of the UDP GRO read `data`
    (the last may be shorter): the tuples io/udp.py's Python loop appends."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), at = 0, m
    cdef const char* d = PyBytes_AS_STRING(data)
    if size <= 0:
        raise ValueError("cut_datagrams: size must be positive")
    while at < n:
        m = size if n - at > size else n - at
        out.append((PyBytes_FromStringAndSize(d + at, m), origin))
        at += m


cdef inline unsigned int _be16(const unsigned char* b) noexcept:
    return (<unsigned int>b[0] << 8) | b[1]


cdef bint _vouched(const unsigned char* f, Py_ssize_t n) noexcept:
    """checksum._l4 and l4_vouched for one frame, step for step (the module docstring)."""
    cdef Py_ssize_t l3 = 12, t, end, length, at
    cdef unsigned int et, b0, proto, field, off, hops = 0
    cdef unsigned long long addrs, pseudo
    cdef bint v4
    if n < 14:
        return False
    et = _be16(f + 12)
    while et == 0x8100 or et == 0x88A8:
        l3 += 4
        if l3 + 2 > n:
            return False
        et = _be16(f + l3)
    l3 += 2
    if et == 0x0800:
        if n < l3 + 20:
            return False
        b0 = f[l3]
        t = l3 + (b0 & 0x0F) * 4
        if b0 >> 4 != 4 or t < l3 + 20:
            return False
        if f[l3 + 6] & 0x3F or f[l3 + 7]:
            return False
        end = l3 + _be16(f + l3 + 2)
        if end > n:
            return False
        proto = f[l3 + 9]
        addrs = _sum16(f + l3 + 12, 8)
        v4 = True
    elif et == 0x86DD:
        if n < l3 + 40 or f[l3] >> 4 != 6:
            return False
        length = _be16(f + l3 + 4)
        if not length:
            return False
        end = l3 + 40 + length
        if end > n:
            return False
        proto = f[l3 + 6]
        t = l3 + 40
        while proto == 0 or proto == 60:
            hops += 1
            if hops > 4 or t + 8 > end:
                return False
            proto = f[t]
            t += (<Py_ssize_t>f[t + 1] + 1) * 8
        addrs = _sum16(f + l3 + 8, 32)
        v4 = False
    else:
        return False
    length = end - t
    if proto == 6:
        if length < 20 or (f[t + 12] >> 4) * 4 < 20:
            return False
        off = 16
    elif proto == 17:
        if length < 8 or _be16(f + t + 4) != length:
            return False
        off = 6
    else:
        return False
    at = t + off
    field = _be16(f + at)
    pseudo = (addrs + proto + <unsigned long long>length) % 0xFFFF
    if not field and off == 6:
        return v4  # no checksum over IPv4; over IPv6 an invalid one
    if field % 0xFFFF == pseudo:
        return True  # partial, in either representation
    return (_sum16(f + t, length) % 0xFFFF + pseudo) % 0xFFFF == 0


def vouch_frames(list frames):
    """checksum.l4_vouched for a list of bytes: one bool per frame; None (the caller then
    runs the Python loop) when an item is not bytes."""
    cdef Py_ssize_t i, k = len(frames)
    cdef object f
    for i in range(k):
        if type(frames[i]) is not bytes:
            return None
    out = [False] * k
    for i in range(k):
        f = frames[i]
        if _vouched(<const unsigned char*>PyBytes_AS_STRING(f), PyBytes_GET_SIZE(f)):
            out[i] = True
    return out
