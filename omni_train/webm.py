"""WebM with Opus audio, what a browser's MediaRecorder writes, rewrapped as Ogg Opus for libsndfile.

libsndfile decodes Opus in an Ogg container but cannot open WebM (Matroska), the container Chrome's
and Firefox's recorders put the same Opus packets in. So no decoder is needed, only a change of
wrapping: `webm_to_ogg` reads the WebM's EBML elements far enough to find the Opus track's header
(its ``CodecPrivate`` is the ``OpusHead`` packet) and its packets (``SimpleBlock`` / ``Block``),
and writes them as an Ogg Opus stream (RFC 7845): a page with the OpusHead, one with OpusTags,
then a page a packet, each stamped with the 48 kHz samples decoded so far, which the packet's
TOC byte gives (RFC 6716, section 3.1). No ffmpeg.

A recorder streaming to a file cannot know the sizes of the Segment and Cluster elements when it
starts them and writes them as "unknown" (all ones). That is why the reader below does not descend
by sizes: it walks the elements in file order, stepping into the containers it needs and over
everything else.
"""

from __future__ import annotations

import struct

EBML_MAGIC = b"\x1a\x45\xdf\xa3"

# Matroska element IDs (with their length marker bits, as written)
_SEGMENT, _CLUSTER, _TRACKS, _TRACK_ENTRY, _BLOCK_GROUP = 0x18538067, 0x1F43B675, 0x1654AE6B, 0xAE, 0xA0
_TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE = 0xD7, 0x86, 0x63A2
_SIMPLE_BLOCK, _BLOCK = 0xA3, 0xA1
_CONTAINERS = {_SEGMENT, _CLUSTER, _TRACKS, _TRACK_ENTRY, _BLOCK_GROUP}  # stepped into, not over


class WebmError(ValueError):
    """A WebM file whose Opus audio cannot be taken out; the message says why."""


def is_webm(data: bytes) -> bool:
    """Whether `data` starts as an EBML (WebM / Matroska) file does."""
    return data[:4] == EBML_MAGIC


def webm_to_ogg(data: bytes) -> bytes:
    """The Opus track of a WebM file as an Ogg Opus file.

    Args:
        data: the whole WebM file.

    Raises:
        WebmError: not EBML, no Opus track, laced or cut-off blocks; the message says which.
    """
    tracks, packets = _read(data)
    opus = [t for t in tracks if t.get("codec") == "A_OPUS"]
    if not opus:
        codecs = ", ".join(str(t.get("codec")) for t in tracks) or "none"
        raise WebmError(f"WebM without an Opus audio track (tracks' codecs: {codecs})")
    track = opus[0]
    head = track.get("private", b"")
    if not head.startswith(b"OpusHead"):
        raise WebmError("WebM Opus track without its OpusHead (CodecPrivate)")
    mine = [p for number, p in packets if number == track.get("number")]
    if not mine:
        raise WebmError("WebM Opus track holds no audio packets")
    return _ogg(head, mine)


# ---- reading EBML ---------------------------------------------------------------------------------
def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int, bool]:
    """A variable-length integer at `pos`: (value, position after it, whether all its value bits are 1)."""
    if pos >= len(data):
        raise WebmError(f"WebM cut off at byte {pos}")
    first = data[pos]
    length = 8 - first.bit_length() + 1
    if first == 0 or pos + length > len(data):
        raise WebmError(f"WebM: not an EBML element at byte {pos}")
    value = first if keep_marker else first & (0xFF >> length)
    for b in data[pos + 1 : pos + length]:
        value = (value << 8) | b
    unknown = not keep_marker and value == (1 << (7 * length)) - 1
    return value, pos + length, unknown


def _read(data: bytes) -> tuple[list[dict], list[tuple[int, bytes]]]:
    """The tracks (number, codec, private) and the (track number, frame) of every block, in file order."""
    if not is_webm(data):
        raise WebmError("not a WebM file (no EBML header)")
    tracks, packets, pos = [], [], 0
    while pos < len(data):
        element, pos, _ = _vint(data, pos, keep_marker=True)
        size, pos, unknown = _vint(data, pos, keep_marker=False)
        if element in _CONTAINERS:
            if element == _TRACK_ENTRY:
                tracks.append({})
            continue  # its children follow: read on, whatever its size says
        if unknown:
            raise WebmError(f"WebM element {element:#x} of unknown size at byte {pos}")
        body = data[pos : pos + size]
        if len(body) < size:  # as a cut-off mp3 is an error (`audio.load_audio`), not the part that came
            raise WebmError(f"WebM cut off: element {element:#x} at byte {pos} declares {size} bytes, "
                            f"{len(body)} follow")  # fmt: skip
        pos += size
        if element in (_SIMPLE_BLOCK, _BLOCK):
            track, at, _ = _vint(body, 0, keep_marker=False)
            if len(body) < at + 3:
                raise WebmError(f"WebM block too short at byte {pos - size}")
            if body[at + 2] & 0x06:  # bits 1-2 of the flags: lacing, several frames in one block
                raise WebmError("WebM with laced blocks is not supported (browser recorders write one frame a block)")
            packets.append((track, body[at + 3 :]))
        elif tracks and element == _TRACK_NUMBER:
            tracks[-1]["number"] = int.from_bytes(body, "big")
        elif tracks and element == _CODEC_ID:
            tracks[-1]["codec"] = body.decode("ascii", "replace").rstrip("\0")
        elif tracks and element == _CODEC_PRIVATE:
            tracks[-1]["private"] = body
    return tracks, packets


# ---- writing Ogg ----------------------------------------------------------------------------------
def _opus_samples(packet: bytes) -> int:
    """48 kHz samples one Opus packet decodes to, from its TOC byte (RFC 6716, 3.1)."""
    config = packet[0] >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config % 2]
    else:  # CELT: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config % 4]
    code = packet[0] & 3
    frames = 1 if code == 0 else 2 if code < 3 else (packet[1] & 0x3F if len(packet) > 1 else 0)
    return frame * frames


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def _ogg_crc(page: bytes) -> int:
    # Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, no initial or final XOR (zlib's is reflected)
    crc = 0
    for b in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC[(crc >> 24) ^ b]
    return crc


def _page(packet: bytes, granule: int, sequence: int, flags: int) -> bytes:
    lacing = bytes([255] * (len(packet) // 255) + [len(packet) % 255])
    if len(lacing) > 255:
        raise WebmError(f"Opus packet of {len(packet)} bytes is larger than an Ogg page holds")
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, 0x0FF1CE, sequence, 0, len(lacing))
    page = header + lacing + packet
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def _ogg(head: bytes, packets: list[bytes]) -> bytes:
    vendor = b"omni-train webm"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    pages = [_page(head, 0, 0, flags=0x02), _page(tags, 0, 1, flags=0)]  # 0x02: first page of the stream
    granule = 0
    packets = [p for p in packets if p]  # an empty frame carries no TOC byte and no audio
    for k, packet in enumerate(packets):
        granule += _opus_samples(packet)
        pages.append(_page(packet, granule, k + 2, flags=0x04 if k == len(packets) - 1 else 0))  # 0x04: last
    return b"".join(pages)
