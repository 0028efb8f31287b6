# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: libraries = crypto
"""WireGuard's transport AEAD for whole runs of messages, over OpenSSL's libcrypto (EVP).

Optional: setup.py builds this module with Cython at install, linking libcrypto (Debian's
libssl-dev at build time, libssl3 at run time); protocol/aead.py loads it. Without it the
engine seals and opens with `cryptography`'s ChaCha20Poly1305, one call per message, which
gives the same bytes (tests/unit/test_aead.py compares the two). _aead.pyi declares the
signatures for mypy. The cipher is OpenSSL's ChaCha20-Poly1305; nothing here computes it.

Why compiled: every segment paid `cryptography`'s fixed ~0.7 µs per call on top of the cipher,
plus ~0.7 µs (sending) and ~1.2 µs (receiving) of Python around it (docs/performance.md). Here
one cipher context lives as long as the keypair and only its nonce changes per message, and one
call handles a whole run:

* `Sealer.seal`: a run of plaintexts for one keypair -> the transport messages (16-byte
  header, ciphertext of the plaintext with WireGuard's padding, 16-byte tag) in one contiguous
  buffer, with counters `counter`, `counter`+1, ... (never one at or above `limit`: the run
  is cut there), and the layout as runs of equal-size datagrams that one sendmsg with
  UDP_SEGMENT sends as is.
* `Opener.open_run`: the messages of one GRO read (a list of (bytes, origin) items, from index
  `i` on, while they are transport messages to `index` from the very `origin` object) are
  authenticated, checked against the replay window (`Window`, which mirrors replay.py) and
  handed on as engine._deliver would: IP packets whose inner source routes back to the peer go
  to `packets`, trimmed to their IP length; the inner source is routed (`check`) only when it
  changes. L2 plaintexts go to `rest` for the engine. Drops are counted by reason and returned.
  The first item it cannot take ends the call: the engine's Python path takes it from there.
* The fused receive (`units=True`, Engine.tcp_units, for a TUN that takes GSO writes): each
  plaintext is opened into a scratch buffer, and a TCP segment that continues the one before it
  has its payload copied from there, still in cache, straight behind the others in the
  super-packet that goes to the TUN (`_Units`, which joins exactly as io/gro.py does): no bytes
  object per segment, and no join of them afterwards. Finished super-packets go to `packets`
  as write units; everything else as bytes, in its place.
* The L2 fast path (`l2_key`, `l2_frames`): a frame that starts like the last one the engine's
  switch wrote to a TAP goes straight to that TAP's list, as engine._deliver's own fast path
  would put it; any other L2 plaintext ends the call, so the engine's switch sees it in order.
  With `frame_units` (Engine.frame_units, TAPs that take GSO writes) those frames are joined
  into TAP write units as the TCP segments of `units` are; with `uso` (Engine.uso_units) both
  join UDP datagrams into USO writes as well.
* `same_destination`: where a run of IP packets to one destination ends, for
  allowedips.route_packets (one owner lookup and one slice per run).
* `flow_run`: where a run of frames with one outer source port ends, for plain VXLAN's send
  (vxlan.py: one flow hash per run; the hash, two slices and a CRC per frame, was 13 % of the
  sending daemon, bench/profile.sh with VXLAN=1).

Every offset below is checked against the buffer it reads: this code runs on bytes from the
network (tests/unit/test_aead.py fuzzes it).

`copy=True` (Sealer, Opener) replaces the cipher by a copy and a zero tag: the bench's floor,
what everything but the AEAD costs (aead.py; a testing knob only, never from a config).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcmp, memcpy, memset


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_CIPHER_CTX* EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX* ctx)
    const EVP_CIPHER* EVP_chacha20_poly1305()
    int EVP_CipherInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
                          const unsigned char* key, const unsigned char* iv, int enc)
    int EVP_CipherUpdate(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl,
                         const unsigned char* inp, int inl)
    int EVP_CipherFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX* ctx, int type, int arg, void* ptr)
    int EVP_CTRL_AEAD_GET_TAG
    int EVP_CTRL_AEAD_SET_TAG


cdef enum:
    HEADER = 16  # type, reserved, receiver index, counter
    TAG = 16
    OVERHEAD = 32  # HEADER + TAG: a keepalive
    MSG_TRANSPORT = 4
    BLOCK_BITS = 64
    RING_BLOCKS = 128
    WINDOW_SIZE = 8128  # (RING_BLOCKS - 1) * BLOCK_BITS, as replay.py
    FLAG_I = 0x08  # the first byte of an L2 plaintext (its VXLAN-style header)
    L2_HEADER = 8  # that header
    L2_MIN = 22  # the header and an Ethernet header: the shortest L2 plaintext
    L2_KEY = 20  # header, destination MAC and source MAC

# REJECT_AFTER_MESSAGES (constants.py): the default limit of Window.accept.
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1

cdef unsigned char _ZEROS[16]  # (static storage: zeros)
U64_MAX = 0xFFFFFFFFFFFFFFFF


cdef inline void _nonce(unsigned char* iv, uint64_t counter) noexcept nogil:
    """4 zero bytes, then the counter as u64 little-endian (WireGuard's nonce)."""
    cdef int k
    memset(iv, 0, 4)
    for k in range(8):
        iv[4 + k] = (counter >> (8 * k)) & 0xFF


cdef inline uint32_t _le32(const uint8_t* b) noexcept nogil:
    return b[0] | (<uint32_t>b[1] << 8) | (<uint32_t>b[2] << 16) | (<uint32_t>b[3] << 24)


cdef inline uint64_t _le64(const uint8_t* b) noexcept nogil:
    return _le32(b) | (<uint64_t>_le32(b + 4) << 32)


cdef inline Py_ssize_t _pad(const uint8_t* p, Py_ssize_t n, Py_ssize_t mtu) noexcept nogil:
    """WireGuard's padding of an IP plaintext (session.seal_batch's rule, byte for byte)."""
    cdef Py_ssize_t pad
    if n and n < mtu and (p[0] & 0xC0) == 0x40:
        pad = (16 - n % 16) % 16
        if n + pad > mtu:
            pad = mtu - n
        return pad
    return 0


cdef inline void _le64_put(uint8_t* o, uint64_t v) noexcept nogil:
    cdef int k
    for k in range(8):
        o[k] = (v >> (8 * k)) & 0xFF


cdef EVP_CIPHER_CTX* _context(bytes key, int enc) except NULL:
    if PyBytes_GET_SIZE(key) != 32:
        raise ValueError("ChaCha20-Poly1305 keys are 32 bytes")
    cdef EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new()
    if ctx == NULL:
        raise MemoryError()
    if EVP_CipherInit_ex(ctx, EVP_chacha20_poly1305(), NULL,
                         <const unsigned char*>PyBytes_AS_STRING(key), NULL, enc) != 1:
        EVP_CIPHER_CTX_free(ctx)
        raise RuntimeError("EVP_CipherInit_ex(chacha20-poly1305) failed")
    return ctx



# ------------------------------------------------------------------ the fused receive: TCP units

cdef enum:
    VNET = 10  # virtio_net_hdr (io/vnet.py)
    MAX_IP = 65535  # what one IP packet, so a GRO super-packet, may reach
    PLAIN_ROOM = 65536  # the scratch a plaintext is opened into (a UDP datagram is smaller)
    SMALL_UNIT = (VNET + MAX_IP) // 2  # a unit below this is copied out of its buffer
    TCP_ACK = 0x10
    TCP_PSH = 0x08
    ETH = 14  # an untagged Ethernet header: where a TAP frame's IP header starts
    USO_MAX = 64  # the most datagrams one USO write carries (gro.USO_MAX_SEGMENTS)



cdef inline uint32_t _be32(const uint8_t* b) noexcept nogil:
    return (<uint32_t>b[0] << 24) | (<uint32_t>b[1] << 16) | (<uint32_t>b[2] << 8) | b[3]


cdef inline void _be16_put(uint8_t* o, Py_ssize_t v) noexcept nogil:
    o[0] = (v >> 8) & 0xFF
    o[1] = v & 0xFF


cdef inline void _le16_put(uint8_t* o, Py_ssize_t v) noexcept nogil:
    o[0] = v & 0xFF
    o[1] = (v >> 8) & 0xFF


cdef inline uint64_t _words(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """The 16-bit big-endian words of p[:n] (n even) added up, not folded."""
    cdef uint64_t s = 0
    cdef Py_ssize_t k
    for k in range(0, n, 2):
        s += (<uint64_t>p[k] << 8) | p[k + 1]
    return s


cdef inline uint32_t _fold(uint64_t s) noexcept nogil:
    """A sum modulo 0xFFFF as checksum.fold gives it: 0 reads as 0xFFFF."""
    s %= 0xFFFF
    return <uint32_t>(s if s else 0xFFFF)


cdef inline Py_ssize_t _joinable(const uint8_t* q, Py_ssize_t n, Py_ssize_t* h) noexcept nogil:
    """Where the TCP header starts when q[:n] (an IP packet of exactly its IP length) is a TCP
    segment the run may join, else 0; `h[0]`: where its payload starts. Joinable, as
    gro.coalesce's: IPv4 without options and not a fragment, or IPv6 straight to TCP; flags
    ACK or ACK|PSH; a data offset of 5 or more; a payload. Anything else is delivered alone."""
    cdef Py_ssize_t t, hh
    if n > MAX_IP:
        return 0  # (an IPv6 length may say 40 + 65535: never one super-packet)
    if n >= 40 and q[0] == 0x45:
        if q[9] != 6 or (q[6] & 0x3F) or q[7]:
            return 0
        t = 20
    elif n >= 60 and (q[0] >> 4) == 6:
        if q[6] != 6:
            return 0
        t = 40
    else:
        return 0
    hh = t + (q[t + 12] >> 4) * 4
    if hh < t + 20 or n <= hh or (q[t + 13] | TCP_PSH) != (TCP_ACK | TCP_PSH):
        return 0
    h[0] = hh
    return t


cdef inline Py_ssize_t _joinable_udp(const uint8_t* q, Py_ssize_t n) noexcept nogil:
    """Where the UDP header starts when q[:n] (an IP packet of exactly its IP length) is a
    datagram a USO write may join, else 0 (its payload starts 8 bytes further). Joinable, as
    gro.coalesce's with `uso`: IPv4 without options and not a fragment, or IPv6 straight to
    UDP; a payload of at least one byte."""
    if n > MAX_IP:
        return 0
    if n > 28 and q[0] == 0x45:
        if q[9] != 17 or (q[6] & 0x3F) or q[7]:
            return 0
        return 20
    if n > 48 and (q[0] >> 4) == 6 and q[6] == 17:
        return 40
    return 0


cdef inline Py_ssize_t _frame_ip(const uint8_t* q, Py_ssize_t n) noexcept nogil:
    """The IP length of the Ethernet frame q[:n] when it is untagged and carries IPv4 or IPv6
    (by its ethertype and its version both) that the frame holds whole, else 0. What follows
    the IP packet is Ethernet's padding (a short frame is padded to 60 bytes), not joined."""
    cdef Py_ssize_t length
    if n < ETH + 20:
        return 0
    if q[12] == 0x08 and q[13] == 0x00 and (q[ETH] >> 4) == 4:
        length = (<Py_ssize_t>q[ETH + 2] << 8) | q[ETH + 3]
    elif q[12] == 0x86 and q[13] == 0xDD and (q[ETH] >> 4) == 6 and n >= ETH + 40:
        length = 40 + ((<Py_ssize_t>q[ETH + 4] << 8) | q[ETH + 5])
    else:
        return 0
    return length if length <= n - ETH else 0


cdef class _Units:
    """The TCP segments of one open_run call joined as gro.coalesce would join them, written
    straight into the super-packet that goes to the TUN: behind its virtio_net_hdr, the first
    segment's headers, then every payload, so no bytes object per segment is made and nothing
    is joined later. Only consecutive segments join (a segment that does not continue the open
    super-packet closes it, as anything else delivered does), so `packets` keeps the order of
    one-message-at-a-time delivery: a finished super-packet goes there as a write unit (a list
    holding one memoryview: header and packet), a lone segment as the bytes of its packet.

    `uso` (the device took USO): UDP datagrams of one flow join as well, as gro.coalesce's
    `uso` joins them (same header fields but length, id and checksums; one payload size, the
    last possibly shorter; at most USO_MAX) into one GSO_UDP_L4 write.

    `l2` (ETH): the same for the Ethernet frames of a TAP (gro.coalesce's `l2`), untagged ones
    carrying IPv4 or IPv6 (_frame_ip; any other frame is handed on alone, as bytes, for the
    Python GRO): the Ethernet header is part of what must be equal, the offsets in the
    virtio_net_hdr count it, and a frame's Ethernet padding is left out of the join.

    The run's first message went through the engine's Python path, so it already sits at the
    end of `packets`: the first joinable segment takes it back as the super-packet's start when
    it continues it (the seed), as gro.coalesce would have joined the two."""

    cdef list packets
    cdef object buf  # the super-packet being built: bytes of VNET + l2 + MAX_IP, or None
    cdef uint8_t* b
    cdef Py_ssize_t l2, t, h, size, gso, count  # (t, h: from the IP header)
    cdef uint32_t next_seq
    cdef bint v6, open, psh, tried_seed, uso, udp
    cdef object seed  # the start taken back from `packets`, handed back as is if alone

    def __cinit__(self, list packets, Py_ssize_t l2=0, bint uso=False):
        self.packets = packets
        self.l2 = l2
        self.uso = uso
        self.udp = False
        self.buf = None
        self.b = NULL
        self.count = 0
        self.tried_seed = False
        self.seed = None

    cdef inline Py_ssize_t _ip(self, const uint8_t* q, Py_ssize_t n, Py_ssize_t* h) noexcept:
        """Where the TCP (or with `uso` UDP) header of the packet or frame q[:n] starts, from
        its IP header, when it may join (else 0); h[0]: where its payload starts, h[1]: its IP
        length (the frame's padding left out), h[2]: 1 for a UDP datagram."""
        cdef Py_ssize_t ipn = n, t
        if self.l2:
            ipn = _frame_ip(q, n)
            if ipn == 0:
                return 0
        h[1] = ipn
        h[2] = 0
        t = _joinable(q + self.l2, ipn, h)
        if t == 0 and self.uso:
            t = _joinable_udp(q + self.l2, ipn)
            if t:
                h[0] = t + 8
                h[2] = 1
        return t

    cdef bint _continues(self, const uint8_t* q, Py_ssize_t n, Py_ssize_t t, Py_ssize_t h,
                         bint udp) noexcept:
        """q (the IP packet of a joinable segment, TCP header at t, payload at h, n its IP
        length) continues the open super-packet: in sequence, no bigger than its segments,
        room left, and every header field equal but IP length, id, checksums, sequence number
        and PSH (gro.coalesce's flow key); for a frame, its Ethernet header too. A datagram
        (`udp`): no sequence, at most USO_MAX in one write, the header fields to the ports."""
        cdef const uint8_t* a = self.b + VNET + self.l2
        cdef Py_ssize_t plen = n - h
        if (self.count == 0 or not self.open or udp != self.udp or t != self.t or h != self.h
                or plen > self.gso or self.size + plen + h > MAX_IP):
            return False
        if udp:
            if self.count >= USO_MAX:
                return False
        elif _be32(q + t + 4) != self.next_seq:
            return False
        if self.l2 and memcmp(self.b + VNET, q - self.l2, self.l2) != 0:
            return False
        if self.v6:
            if memcmp(a, q, 4) != 0 or memcmp(a + 6, q + 6, t + 4 - 6) != 0:
                return False
        elif (memcmp(a, q, 2) != 0 or memcmp(a + 6, q + 6, 4) != 0
              or memcmp(a + 12, q + 12, t + 4 - 12) != 0):
            return False
        if udp:
            return True
        return (memcmp(a + t + 8, q + t + 8, 5) == 0 and memcmp(a + t + 14, q + t + 14, 2) == 0
                and memcmp(a + t + 20, q + t + 20, h - (t + 20)) == 0)

    cdef int _start(self, const uint8_t* q, Py_ssize_t n, Py_ssize_t t, Py_ssize_t h,
                    bint udp) except -1:
        """A new super-packet from the packet or frame q (its IP length n)."""
        if self.buf is None:
            self.buf = PyBytes_FromStringAndSize(NULL, VNET + self.l2 + MAX_IP)
            self.b = <uint8_t*>PyBytes_AS_STRING(self.buf)
        memcpy(self.b + VNET, q, self.l2 + n)
        self.t = t
        self.h = h
        self.udp = udp
        self.v6 = (q[self.l2] >> 4) == 6
        self.size = self.gso = n - h
        self.count = 1
        self.open = True
        self.psh = False
        self.seed = None
        return 0

    cdef int add(self, const uint8_t* q, Py_ssize_t n) except -1:
        """Deliver the IP packet q[:n] (exactly its IP length), or with `l2` the frame q[:n]."""
        cdef Py_ssize_t hl[3]
        cdef Py_ssize_t lhl[3]
        cdef Py_ssize_t h, t, plen, ipn, lt, ln, k
        cdef const uint8_t* lp
        cdef const uint8_t* qi
        cdef object last
        t = self._ip(q, n, hl)
        if t == 0:
            self.flush()
            self.packets.append(PyBytes_FromStringAndSize(<char*>q, n))
            return 0
        h = hl[0]
        ipn = hl[1]
        qi = q + self.l2
        if self.count == 0 and not self.tried_seed:
            self.tried_seed = True
            k = len(self.packets)
            if k:
                last = self.packets[k - 1]  # (no wraparound here: never a negative index)
                if type(last) is bytes:
                    lp = <const uint8_t*>PyBytes_AS_STRING(last)
                    ln = PyBytes_GET_SIZE(last)
                    lt = self._ip(lp, ln, lhl)
                    if lt:
                        self.packets.pop()
                        self._start(lp, lhl[1], lt, lhl[0], lhl[2])
                        lp += self.l2
                        if not lhl[2]:
                            self.next_seq = _be32(lp + lt + 4) + <uint32_t>(lhl[1] - lhl[0])
                            if lp[lt + 13] & TCP_PSH:
                                self.open = False
                                self.psh = True
                        self.seed = last
        plen = ipn - h
        if self._continues(qi, ipn, t, h, hl[2]):
            memcpy(self.b + VNET + self.l2 + self.h + self.size, qi + h, plen)
            self.size += plen
            self.count += 1
            if plen < self.gso:
                self.open = False  # a shorter segment is the last one
        else:
            self.flush()
            self._start(q, ipn, t, h, hl[2])
        if hl[2]:
            return 0  # (a datagram: no sequence, no PSH)
        self.next_seq = _be32(qi + t + 4) + <uint32_t>plen
        if qi[t + 13] & TCP_PSH:
            self.open = False
            self.psh = True
        return 0

    cdef int flush(self) except -1:
        """The open super-packet to `packets`: alone as its packet's bytes, or as a GSO write
        with NEEDS_CSUM whose checksum field holds the folded pseudo-header sum (gro._unit)."""
        cdef uint8_t* a
        cdef Py_ssize_t l2 = self.l2, t = self.t, h = self.h, l4_len, total
        cdef uint64_t psum, proto
        if self.count == 0:
            return 0
        if self.count == 1:
            if self.seed is not None:
                self.packets.append(self.seed)
            else:
                self.packets.append(
                    PyBytes_FromStringAndSize(<char*>self.b + VNET, l2 + h + self.size))
            self.count = 0
            self.seed = None
            return 0
        a = self.b + VNET + l2
        # (GSO_UDP_L4: the UDP length and pseudo-header sum are those of the whole, as the
        # kernel's segmentation replaces the length in both per datagram: gro._unit)
        proto = 17 if self.udp else 6
        l4_len = h - t + self.size
        if self.v6:
            _be16_put(a + 4, l4_len)
            psum = _words(a + 8, 32) + proto + <uint64_t>l4_len
        else:
            _be16_put(a + 2, t + l4_len)
            a[10] = 0
            a[11] = 0
            _be16_put(a + 10, 0xFFFF - _words(a, 20) % 0xFFFF)  # checksum.finish
            psum = _words(a + 12, 8) + proto + <uint64_t>l4_len
        self.b[0] = 1  # F_NEEDS_CSUM
        if self.udp:
            _be16_put(a + t + 4, l4_len)
            _be16_put(a + t + 6, _fold(psum))
            self.b[1] = 5  # GSO_UDP_L4
            _le16_put(self.b + 8, 6)  # csum_offset
        else:
            if self.psh:
                a[t + 13] |= TCP_PSH
            _be16_put(a + t + 16, _fold(psum))
            self.b[1] = 4 if self.v6 else 1  # GSO_TCPV6, GSO_TCPV4
            _le16_put(self.b + 8, 16)  # csum_offset
        _le16_put(self.b + 2, l2 + h)  # hdr_len
        _le16_put(self.b + 4, self.gso)
        _le16_put(self.b + 6, l2 + t)  # csum_start
        total = VNET + l2 + h + self.size
        if total < SMALL_UNIT:
            # Copied out, the buffer kept for the next: a unit never pins more than twice its
            # size (a peer sending pairs of tiny segments must not hold 64 KiB per pair).
            self.packets.append([PyBytes_FromStringAndSize(<char*>self.b, total)])
        else:
            self.packets.append([memoryview(self.buf)[:total]])
            self.buf = None  # that one is the unit's now
            self.b = NULL
        self.count = 0
        self.seed = None
        return 0


cdef class Window:
    """The replay window of one keypair, as protocol/replay.py's ReplayWindow: the same ring of
    128 64-bit blocks, the same branches in the same order (tests/unit/test_aead.py runs both
    over random counter sequences). Counters are u64, as on the wire."""

    cdef uint64_t _last
    cdef uint64_t _ring[RING_BLOCKS]

    def __cinit__(self):
        self._last = 0
        memset(self._ring, 0, sizeof(self._ring))

    def reset(self):
        self._last = 0
        memset(self._ring, 0, sizeof(self._ring))

    @property
    def last(self):
        """Greatest counter accepted so far (0 before any)."""
        return self._last

    def accept(self, counter, limit=REJECT_AFTER_MESSAGES):
        """True if `counter` is new (and now recorded); False if replayed, too old or >= limit."""
        if counter < 0 or counter > U64_MAX:
            return False  # (replay.py: a negative counter is too old; wire counters are u64)
        return self._accept(counter, min(limit, U64_MAX))

    cdef bint _accept(self, uint64_t counter, uint64_t limit) noexcept nogil:
        cdef uint64_t last = self._last
        cdef uint64_t block, current, i
        cdef uint64_t bit = (<uint64_t>1) << (counter & (BLOCK_BITS - 1))
        cdef uint64_t index
        if (counter ^ last) < BLOCK_BITS and last < counter and counter < limit:
            self._ring[(counter >> 6) & (RING_BLOCKS - 1)] |= bit
            self._last = counter
            return True
        if counter > last:
            if counter >= limit:
                return False
            block = counter >> 6
            current = last >> 6
            if block != current:
                if block - current >= RING_BLOCKS:
                    memset(self._ring, 0, sizeof(self._ring))
                else:
                    i = current + 1
                    while i <= block:
                        self._ring[i & (RING_BLOCKS - 1)] = 0
                        i += 1
                self._ring[block & (RING_BLOCKS - 1)] = bit
            else:
                self._ring[block & (RING_BLOCKS - 1)] |= bit
            self._last = counter
            return True
        if last - counter > WINDOW_SIZE:
            return False
        index = (counter >> 6) & (RING_BLOCKS - 1)
        if self._ring[index] & bit:
            return False
        self._ring[index] |= bit
        return True


cdef class Sealer:
    """The sending half of a keypair: one EVP context for its whole life (the key is set once,
    each message sets only its nonce)."""

    cdef EVP_CIPHER_CTX* ctx
    cdef bint copy

    def __cinit__(self, bytes key, bint copy=False):
        self.ctx = _context(key, 1)
        self.copy = copy  # the bench's floor (aead.py): no cipher at all

    def __dealloc__(self):
        if self.ctx != NULL:
            EVP_CIPHER_CTX_free(self.ctx)  # (OpenSSL cleanses the key schedule)

    cdef int _seal(self, const uint8_t* p, Py_ssize_t n, Py_ssize_t pad, uint64_t counter,
                   uint8_t* out, const uint8_t* aad=NULL, Py_ssize_t aadlen=0) except -1:
        """Ciphertext of p ‖ zeros(pad) and its tag at `out` (n + pad + 16 bytes). `out` may
        be `p` itself (sealed in place: OpenSSL's ChaCha20-Poly1305 allows it)."""
        cdef unsigned char iv[12]
        cdef int outl = 0
        if self.copy:
            if out != p:
                memcpy(out, p, n)
            memset(out + n, 0, pad + TAG)
            return 0
        _nonce(iv, counter)
        if EVP_CipherInit_ex(self.ctx, NULL, NULL, NULL, iv, 1) != 1:
            raise RuntimeError("EVP_CipherInit_ex failed")
        if aadlen and EVP_CipherUpdate(self.ctx, NULL, &outl, aad, <int>aadlen) != 1:
            raise RuntimeError("EVP_CipherUpdate (AAD) failed")
        if n and EVP_CipherUpdate(self.ctx, out, &outl, p, <int>n) != 1:
            raise RuntimeError("EVP_CipherUpdate failed")
        if pad and EVP_CipherUpdate(self.ctx, out + n, &outl, _ZEROS, <int>pad) != 1:
            raise RuntimeError("EVP_CipherUpdate failed")
        if EVP_CipherFinal_ex(self.ctx, out + n + pad, &outl) != 1:
            raise RuntimeError("EVP_CipherFinal_ex failed")
        if EVP_CIPHER_CTX_ctrl(self.ctx, EVP_CTRL_AEAD_GET_TAG, TAG, out + n + pad) != 1:
            raise RuntimeError("EVP_CTRL_AEAD_GET_TAG failed")
        return 0

    cdef Py_ssize_t _put(self, const uint8_t* p, Py_ssize_t n, const uint8_t* pre,
                         Py_ssize_t plen, Py_ssize_t mtu, uint64_t counter, uint8_t* o,
                         Py_ssize_t at, Py_ssize_t total) except -1:
        """Seal the plaintext (pre[:plen] ‖) p[:n], padded, at o + at + HEADER; -> its sealed
        length without the overhead. Pass 1 sized the buffer: a plaintext that grew since
        (another thread wrote to a bytearray) is refused rather than written past its end."""
        cdef Py_ssize_t pad
        cdef uint8_t* dst = o + at + HEADER
        if pre != NULL:
            pad = _pad(pre, plen + n, mtu)
            if at + OVERHEAD + plen + n + pad > total:
                raise ValueError("a plaintext changed while it was sealed")
            memcpy(dst, pre, plen)
            memcpy(dst + plen, p, n)
            self._seal(dst, plen + n, pad, counter, dst)
            return plen + n + pad
        pad = _pad(p, n, mtu)
        if at + OVERHEAD + n + pad > total:
            raise ValueError("a plaintext changed while it was sealed")
        self._seal(p, n, pad, counter, dst)
        return n + pad

    def encrypt(self, uint64_t counter, bytes plaintext, bytes aad=b""):
        """One AEAD seal, ciphertext ‖ tag, as cryptography's ChaCha20Poly1305.encrypt with
        WireGuard's nonce for `counter` (no padding, no header): for the RFC 8439 vectors."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(plaintext)
        out = PyBytes_FromStringAndSize(NULL, n + TAG)
        self._seal(<const uint8_t*>PyBytes_AS_STRING(plaintext), n, 0, counter,
                   <uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>PyBytes_AS_STRING(aad),
                   PyBytes_GET_SIZE(aad))
        return out

    def seal(self, uint32_t remote_index, uint64_t counter, list payloads, Py_ssize_t mtu,
             uint64_t limit, bytes prefix=None):
        """-> (buffer, runs, messages sealed, bytes): see the module docstring.

        IP plaintexts (first byte 0x4_ to 0x7_, as session.seal_batch tests it) are padded with
        zeros to a multiple of 16, never beyond `mtu`; L2 plaintexts and keepalives (empty) are
        not. `runs` is a list of (start, end, size): the datagrams from `start` to `end` are
        `size` bytes each, the last possibly shorter (a shorter one ends a run).

        `prefix` (the L2 header of a segment's frames): each plaintext is prefix ‖ payload,
        copied into its place in the buffer and sealed there, so no joined bytes object is made
        per frame. Padding then follows the prefix's first byte (an L2 header: none)."""
        cdef Py_ssize_t count = len(payloads)
        cdef Py_ssize_t k, n, total = 0, at = 0, size
        cdef Py_ssize_t plen = 0
        cdef const uint8_t* pre = NULL
        if prefix is not None and PyBytes_GET_SIZE(prefix):
            plen = PyBytes_GET_SIZE(prefix)
            pre = <const uint8_t*>PyBytes_AS_STRING(prefix)
        cdef Py_ssize_t run_start = 0, run_size = -1
        cdef bint run_open = False
        cdef Py_buffer view
        cdef const uint8_t* p
        cdef uint8_t* o
        cdef object item
        if counter >= limit:
            count = 0
        elif <uint64_t>count > limit - counter:
            count = <Py_ssize_t>(limit - counter)  # never a nonce at or past the limit
        # Pass 1: the size of every message (the padding needs each plaintext's first byte).
        for k in range(count):
            item = payloads[k]
            if type(item) is bytes:
                n = PyBytes_GET_SIZE(item)
                p = <const uint8_t*>PyBytes_AS_STRING(item)
                if pre != NULL:
                    total += OVERHEAD + plen + n + _pad(pre, plen + n, mtu)
                else:
                    total += OVERHEAD + n + _pad(p, n, mtu)
            else:
                PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
                if pre != NULL:
                    total += OVERHEAD + plen + view.len + _pad(pre, plen + view.len, mtu)
                else:
                    total += OVERHEAD + view.len + _pad(<const uint8_t*>view.buf, view.len, mtu)
                PyBuffer_Release(&view)
        buf = PyBytes_FromStringAndSize(NULL, total)
        o = <uint8_t*>PyBytes_AS_STRING(buf)
        runs = []
        # Pass 2: header, ciphertext and tag of each, in place; the runs as they form.
        for k in range(count):
            item = payloads[k]
            if type(item) is bytes:
                n = self._put(<const uint8_t*>PyBytes_AS_STRING(item), PyBytes_GET_SIZE(item),
                              pre, plen, mtu, counter, o, at, total)
            else:
                PyObject_GetBuffer(item, &view, PyBUF_SIMPLE)
                try:
                    n = self._put(<const uint8_t*>view.buf, view.len, pre, plen, mtu, counter,
                                  o, at, total)
                finally:
                    PyBuffer_Release(&view)
            o[at] = MSG_TRANSPORT
            o[at + 1] = 0
            o[at + 2] = 0
            o[at + 3] = 0
            o[at + 4] = remote_index & 0xFF
            o[at + 5] = (remote_index >> 8) & 0xFF
            o[at + 6] = (remote_index >> 16) & 0xFF
            o[at + 7] = (remote_index >> 24) & 0xFF
            _le64_put(o + at + 8, counter)
            size = OVERHEAD + n
            if run_open and size == run_size:
                pass
            elif run_open and size < run_size:
                runs.append((run_start, at + size, run_size))  # a shorter one ends the run
                run_open = False
            else:
                if run_open:
                    runs.append((run_start, at, run_size))
                run_start = at
                run_size = size
                run_open = True
            at += size
            counter += 1
        if run_open:
            runs.append((run_start, at, run_size))
        return buf, runs, count, total


cdef class Opener:
    """The receiving half of a keypair: one EVP context for its whole life."""

    cdef EVP_CIPHER_CTX* ctx
    cdef bint copy
    cdef uint8_t* plain  # units mode: every plaintext is opened here first (PLAIN_ROOM)

    def __cinit__(self, bytes key, bint copy=False):
        self.ctx = _context(key, 0)
        self.copy = copy
        self.plain = NULL

    def __dealloc__(self):
        if self.ctx != NULL:
            EVP_CIPHER_CTX_free(self.ctx)
        PyMem_Free(self.plain)

    cdef bint _open(self, const uint8_t* c, Py_ssize_t clen, uint64_t counter,
                    uint8_t* out, const uint8_t* aad=NULL, Py_ssize_t aadlen=0) noexcept:
        """Plaintext of the `clen - 16` bytes at `c` (their tag after them) at `out`; False if
        the tag does not authenticate them. `clen` >= 16."""
        cdef unsigned char iv[12]
        cdef int outl = 0
        if self.copy:
            if memcmp(c + clen - TAG, _ZEROS, TAG) != 0:
                return False
            memcpy(out, c, clen - TAG)
            return True
        _nonce(iv, counter)
        if EVP_CipherInit_ex(self.ctx, NULL, NULL, NULL, iv, 0) != 1:
            return False
        if aadlen and EVP_CipherUpdate(self.ctx, NULL, &outl, aad, <int>aadlen) != 1:
            return False
        if EVP_CIPHER_CTX_ctrl(self.ctx, EVP_CTRL_AEAD_SET_TAG, TAG,
                               <void*>(c + clen - TAG)) != 1:
            return False
        if clen > TAG and EVP_CipherUpdate(self.ctx, out, &outl, c, <int>(clen - TAG)) != 1:
            return False
        return EVP_CipherFinal_ex(self.ctx, out + clen - TAG, &outl) == 1

    def open(self, uint64_t counter, data, bytes aad=b""):
        """The plaintext of the transport message `data` (header included) with nonce
        `counter`, or None when it is shorter than a keepalive or does not authenticate.
        (`aad`: for the RFC 8439 vectors; WireGuard's transport messages have none.)"""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len < OVERHEAD:
                return None
            plain = PyBytes_FromStringAndSize(NULL, view.len - OVERHEAD)
            if not self._open(<const uint8_t*>view.buf + HEADER, view.len - HEADER, counter,
                              <uint8_t*>PyBytes_AS_STRING(plain),
                              <const uint8_t*>PyBytes_AS_STRING(aad), PyBytes_GET_SIZE(aad)):
                return None
            return plain
        finally:
            PyBuffer_Release(&view)

    def open_run(self, list items, Py_ssize_t i, uint32_t index, object origin,
                 Window window not None,
                 uint64_t limit, list packets, list rest, object check, object known_src,
                 bint units=False, object l2_key=None, list l2_frames=None,
                 bint frame_units=False, bint uso=False):
        """Open items[i:] while each is (bytes, `origin` itself) holding a transport message to
        `index`; see the module docstring. -> (next index, messages accepted, their bytes,
        packets delivered, the inner source last routed, and the drops: expired_session,
        bad_auth, replay, bad_inner_packet, not_allowed_source). `units`: TCP segments are
        joined into TUN write units as they are opened (_Units), for a TUN with offloads.
        `l2_key`, `l2_frames`: an L2 plaintext whose first 20 bytes (header, destination and
        source MAC) are `l2_key` has its frame appended to `l2_frames` (engine._deliver's fast
        path: the TAP bucket of the last such frame); any other goes to `rest` and ends the
        call, so that the engine delivers it before the frames after it. `frame_units`: the
        frames that go to `l2_frames` are joined as `units` joins packets (_Units with ETH),
        for TAPs that take GSO writes. `uso`: both join UDP datagrams too (USO writes), for
        devices that took USO."""
        cdef Py_ssize_t j = i, n, pl, length, src_at, src_len
        cdef uint64_t counter
        cdef const uint8_t* d
        cdef const uint8_t* known = NULL
        cdef Py_ssize_t known_len = 0
        cdef uint8_t* q
        cdef uint8_t b0
        cdef Py_ssize_t accepted = 0, nbytes = 0, delivered = 0
        cdef Py_ssize_t expired = 0, bad_auth = 0, replay = 0, bad_inner = 0, not_allowed = 0
        cdef object item, data, plain = None, src
        cdef _Units joiner = _Units(packets, 0, uso) if units else None
        cdef _Units frame_joiner = None
        if (units or frame_units) and self.plain == NULL:
            # One scratch per Opener, not one for the module: no two receive paths share it.
            self.plain = <uint8_t*>PyMem_Malloc(PLAIN_ROOM)
            if self.plain == NULL:
                raise MemoryError()
        cdef bint scratch
        cdef const uint8_t* l2k = NULL
        if l2_key is not None and l2_frames is not None:
            if type(l2_key) is not bytes or PyBytes_GET_SIZE(l2_key) != L2_KEY:
                raise ValueError("l2_key must be 20 bytes")
            l2k = <const uint8_t*>PyBytes_AS_STRING(l2_key)
            if frame_units:
                frame_joiner = _Units(l2_frames, ETH, uso)
        if known_src is not None:
            if type(known_src) is not bytes:
                raise TypeError("known_src must be bytes or None")
            known = <const uint8_t*>PyBytes_AS_STRING(known_src)
            known_len = PyBytes_GET_SIZE(known_src)
        if i < 0:
            return (i, 0, 0, 0, known_src, 0, 0, 0, 0, 0)
        while j < len(items):
            item = items[j]
            if type(item) is not tuple or len(<tuple>item) != 2 or (<tuple>item)[1] is not origin:
                break
            data = (<tuple>item)[0]
            if type(data) is not bytes:
                break
            n = PyBytes_GET_SIZE(data)
            if n < OVERHEAD:
                break
            d = <const uint8_t*>PyBytes_AS_STRING(data)
            if _le32(d) != MSG_TRANSPORT or _le32(d + 4) != index:
                break
            j += 1
            counter = _le64(d + 8)
            if counter >= limit:
                expired += 1
                continue
            pl = n - OVERHEAD
            # Units mode opens into the scratch: a joined segment's payload is copied from
            # there (still in cache) into its super-packet, and no bytes object is made for it.
            scratch = (units or frame_units) and pl <= PLAIN_ROOM
            if scratch:
                q = self.plain
            else:
                plain = PyBytes_FromStringAndSize(NULL, pl)
                q = <uint8_t*>PyBytes_AS_STRING(plain)
            if not self._open(d + HEADER, n - HEADER, counter, q):
                bad_auth += 1
                continue
            if not window._accept(counter, limit):
                replay += 1
                continue
            accepted += 1
            nbytes += n
            if pl == 0:
                continue  # a keepalive
            # engine._deliver, for IP packets: the same checks in the same order.
            b0 = q[0]
            if b0 >> 4 == 4:
                if pl < 20:
                    bad_inner += 1
                    continue
                length = (<Py_ssize_t>q[2] << 8) | q[3]
                src_at = 12
                src_len = 4
            elif b0 >> 4 == 6:
                if pl < 40:
                    bad_inner += 1
                    continue
                length = 40 + ((<Py_ssize_t>q[4] << 8) | q[5])
                src_at = 8
                src_len = 16
            elif b0 == FLAG_I:
                if l2k != NULL and pl >= L2_MIN and memcmp(q, l2k, L2_KEY) == 0:
                    if frame_joiner is not None and scratch:
                        frame_joiner.add(q + L2_HEADER, pl - L2_HEADER)
                    else:
                        if frame_joiner is not None:
                            frame_joiner.flush()  # (a plaintext too big for the scratch)
                        l2_frames.append(
                            PyBytes_FromStringAndSize(<char*>q + L2_HEADER, pl - L2_HEADER))
                    delivered += 1
                    continue
                # An L2 plaintext: the engine's switch takes it, after the frames before it.
                if frame_joiner is not None:
                    frame_joiner.flush()
                rest.append(PyBytes_FromStringAndSize(<char*>q, pl) if scratch else plain)
                if l2k != NULL:
                    break  # (the engine delivers it now: it may change what l2_key should be)
                continue
            else:
                bad_inner += 1
                continue
            if length > pl or length < 20:
                bad_inner += 1
                continue
            if known == NULL or known_len != src_len or memcmp(known, q + src_at, src_len) != 0:
                # Cryptokey routing of the inner source, once per source change.
                src = PyBytes_FromStringAndSize(<char*>q + src_at, src_len)
                if not check(src):
                    not_allowed += 1
                    continue
                known_src = src
                known = <const uint8_t*>PyBytes_AS_STRING(known_src)
                known_len = src_len
            delivered += 1
            if scratch:
                if joiner is not None:
                    joiner.add(q, length)
                else:  # (the scratch is for the frames: the packet is copied out)
                    packets.append(PyBytes_FromStringAndSize(<char*>q, length))
                continue
            if length < pl:
                # Padding off: small packets only (full-size segments carry none).
                plain = PyBytes_FromStringAndSize(<char*>q, length)
            if joiner is not None:
                joiner.flush()  # (units mode, a plaintext too big for the scratch: in order)
            packets.append(plain)
        if joiner is not None:
            joiner.flush()
        if frame_joiner is not None:
            frame_joiner.flush()
        return (j, accepted, nbytes, delivered, known_src,
                expired, bad_auth, replay, bad_inner, not_allowed)


# ------------------------------------------------------------------ cryptokey routing out

def same_destination(list packets, Py_ssize_t i):
    """The end of the run of IP packets from packets[i] on that share its IP version and
    destination address (allowedips.route_packets looks the owner up once per run): each one
    bytes and long enough for its IP header (20 or 40 bytes). `i` itself when packets[i] is no
    such packet (the caller's per-packet path counts it)."""
    cdef Py_ssize_t n = len(packets), j, at, size, need
    cdef const uint8_t* a
    cdef const uint8_t* b
    cdef object p
    cdef uint8_t version
    if i < 0 or i >= n:
        return i
    p = packets[i]
    if type(p) is not bytes:
        return i
    a = <const uint8_t*>PyBytes_AS_STRING(p)
    version = a[0] >> 4 if PyBytes_GET_SIZE(p) else 0
    if version == 4:
        at, size, need = 16, 4, 20
    elif version == 6:
        at, size, need = 24, 16, 40
    else:
        return i
    if PyBytes_GET_SIZE(p) < need:
        return i
    j = i + 1
    while j < n:
        p = packets[j]
        if type(p) is not bytes or PyBytes_GET_SIZE(p) < need:
            break
        b = <const uint8_t*>PyBytes_AS_STRING(p)
        if (b[0] >> 4) != version or memcmp(a + at, b + at, size) != 0:
            break
        j += 1
    return j


# ------------------------------------------------------------------ L2 egress

def egress_run(list frames, Py_ssize_t i, bytes header not None, Py_ssize_t max_frame,
               list payloads not None):
    """Switch.egress's loop for one run: `header` + frame appended to `payloads` for frames[i:]
    while each is bytes, an Ethernet header long (14 bytes) and at most `max_frame`, and sent to
    the destination MAC of frames[i]. Returns the index after the run (`i` itself when frames[i]
    is no such frame: the Python loop takes it). An empty `header`: the frames themselves, no
    copy (the engine seals them behind the segment's header: Sealer.seal's `prefix`)."""
    cdef Py_ssize_t n = len(frames), j = i, size, hlen = PyBytes_GET_SIZE(header)
    cdef const uint8_t* a
    cdef const uint8_t* b
    cdef object p, out
    cdef char* o
    if i < 0 or i >= n:
        return i
    p = frames[i]
    if type(p) is not bytes or PyBytes_GET_SIZE(p) < 14 or PyBytes_GET_SIZE(p) > max_frame:
        return i
    a = <const uint8_t*>PyBytes_AS_STRING(p)
    while j < n:
        p = frames[j]
        if type(p) is not bytes:
            break
        size = PyBytes_GET_SIZE(p)
        if size < 14 or size > max_frame:
            break
        b = <const uint8_t*>PyBytes_AS_STRING(p)
        if memcmp(a, b, 6) != 0:
            break
        j += 1
        if hlen == 0:
            payloads.append(p)
            continue
        out = PyBytes_FromStringAndSize(NULL, hlen + size)
        o = PyBytes_AS_STRING(out)
        memcpy(o, PyBytes_AS_STRING(header), hlen)
        memcpy(o + hlen, b, size)
        payloads.append(out)
    return j


# ------------------------------------------------------------------ plain VXLAN flows

cdef Py_ssize_t _flow_span(const uint8_t* f, Py_ssize_t n) noexcept:
    """How many bytes from the frame's start vxlan_header.flow_hash's key depends on, as a
    code: 14 (MACs and ethertype only), 34 (and IPv4's addresses), 54 (IPv6's), 0 (too short
    for an Ethernet header)."""
    if n < 14:
        return 0
    if f[12] == 0x08 and f[13] == 0x00 and n >= 34:
        return 34
    if f[12] == 0x86 and f[13] == 0xDD and n >= 54:
        return 54
    return 14


def flow_run(list frames, Py_ssize_t i, Py_ssize_t offset):
    """The index after the run of frames[i:] (each bytes, its Ethernet frame starting at
    `offset`) whose vxlan_header.flow_hash equals frames[i]'s because every byte that hash reads
    is equal: both MACs and the ethertype, and for IPv4 (IPv6) frames long enough to hold them
    the source and destination addresses, the length condition being the same too. So the
    VXLAN engine hashes once per run. `i` + 1 at least (frames[i] alone: the caller hashes it)."""
    cdef Py_ssize_t n = len(frames), j = i + 1, span, lo
    cdef const uint8_t* a
    cdef const uint8_t* b
    cdef object p
    if i < 0 or i >= n or offset < 0:
        return i + 1
    p = frames[i]
    if type(p) is not bytes or PyBytes_GET_SIZE(p) < offset:
        return i + 1
    a = <const uint8_t*>PyBytes_AS_STRING(p) + offset
    span = _flow_span(a, PyBytes_GET_SIZE(p) - offset)
    if span == 0:
        return i + 1
    lo = 26 if span == 34 else 22  # where the addresses start (span 14: none compared)
    while j < n:
        p = frames[j]
        if type(p) is not bytes or PyBytes_GET_SIZE(p) < offset:
            break
        b = <const uint8_t*>PyBytes_AS_STRING(p) + offset
        if _flow_span(b, PyBytes_GET_SIZE(p) - offset) != span or memcmp(a, b, 14) != 0:
            break
        if span > 14 and memcmp(a + lo, b + lo, span - lo) != 0:
            break
        j += 1
    return j


def vxlan_run(list items, Py_ssize_t i, bytes key not None, object key_ip, list frames not None):
    """VxlanEngine.from_network's run: the frames of items[i:] (each a (datagram, origin)
    tuple) appended to `frames` while the datagram is bytes holding a VXLAN and an Ethernet
    header, starts with `key` (VXLAN header, destination and source MAC) and comes from an
    origin whose host equals `key_ip`. Returns (index after the run, bytes of its datagrams)."""
    cdef Py_ssize_t n = len(items), j = i, size, klen = PyBytes_GET_SIZE(key), total = 0
    cdef object item, data, origin
    if i < 0 or klen < 8:
        return i, 0
    while j < n:
        item = items[j]
        if type(item) is not tuple or len(<tuple>item) != 2:
            break
        data = (<tuple>item)[0]
        origin = (<tuple>item)[1]
        if type(data) is not bytes:
            break
        size = PyBytes_GET_SIZE(data)
        if size < 8 + 14 or size < klen or memcmp(PyBytes_AS_STRING(data), PyBytes_AS_STRING(key), klen) != 0:
            break
        if type(origin) is not tuple or len(<tuple>origin) < 1 or (<tuple>origin)[0] != key_ip:
            break
        frames.append(PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + 8, size - 8))
        total += size
        j += 1
    return j, total
