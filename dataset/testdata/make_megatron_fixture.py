#!/usr/bin/env python3
"""Writes small Megatron-LM indexed datasets (.bin + .idx) for indexed_dataset_test.

An independent writer: it follows megatron/core/datasets/indexed_dataset.py
(_IndexWriter.write and IndexedDatasetBuilder) byte for byte, using only the
standard library, so the C++ reader is checked against Megatron's layout rather
than against the C++ writer.

  .idx: b"MMIDIDX\\x00\\x00", <Q version=1, <B dtype code, <Q sequence_count,
        <Q document_count, int32[S] sequence_lengths, int64[S] sequence_pointers,
        int64[D] document_indices, (int8[S] sequence_modes when multimodal)
  .bin: every sequence's tokens, back to back, little-endian

Run from the repository root:  python3 dataset/testdata/make_megatron_fixture.py
It rewrites the fixtures and expected.json next to this script.
"""

import json
import os
import struct

HEADER = b"MMIDIDX\x00\x00"
# Megatron's DType codes and struct formats.
DTYPES = {"uint16": (8, "H", 2), "int32": (4, "i", 4)}


def lcg_tokens(n, seed, vocab):
    """Deterministic pseudo-random tokens (no dependence on Python's random)."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((x >> 33) % vocab)
    return out


def write_dataset(prefix, dtype, documents, modes=None):
    """documents: list of documents, each a list of sequences (lists of tokens)."""
    code, fmt, itemsize = DTYPES[dtype]
    sequence_lengths, document_indices = [], [0]  # IndexedDatasetBuilder starts with [0]
    with open(prefix + ".bin", "wb") as f:
        for doc in documents:
            for seq in doc:  # add_item
                f.write(struct.pack("<%d%s" % (len(seq), fmt), *seq))
                sequence_lengths.append(len(seq))
            document_indices.append(len(sequence_lengths))  # end_document
    pointers, ptr = [], 0  # _IndexWriter._sequence_pointers
    for length in sequence_lengths:
        pointers.append(ptr)
        ptr += length * itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sequence_lengths)))
        f.write(struct.pack("<Q", len(document_indices)))
        f.write(struct.pack("<%di" % len(sequence_lengths), *sequence_lengths))
        f.write(struct.pack("<%dq" % len(pointers), *pointers))
        f.write(struct.pack("<%dq" % len(document_indices), *document_indices))
        if modes is not None:
            assert len(modes) == len(sequence_lengths)
            f.write(struct.pack("<%db" % len(modes), *modes))
    return {
        "dtype": dtype,
        "dtype_code": code,
        "num_sequences": len(sequence_lengths),
        "documents": [[t for seq in doc for t in seq] for doc in documents],
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    expected = {}
    # uint16: edge values 0 and 65535; document 1 is two sequences.
    expected["megatron_uint16"] = write_dataset(
        os.path.join(here, "megatron_uint16"),
        "uint16",
        [
            [[0, 1, 2, 65535]],
            [[10, 11], [12, 13, 14]],
            [[500]],
            [lcg_tokens(300, 1, 65536)],
            [[65499, 7, 7, 7]],
        ],
    )
    # int32: the int32 maximum, a Qwen2-sized vocabulary, a three-sequence document.
    expected["megatron_int32"] = write_dataset(
        os.path.join(here, "megatron_int32"),
        "int32",
        [
            [[2147483647, 0, 100000]],
            [lcg_tokens(200, 2, 151936)],
            [[151935], [1, 2], [3]],
        ],
    )
    # int32 with Megatron's multimodal trailer (int8 sequence_modes).
    expected["megatron_int32_modes"] = write_dataset(
        os.path.join(here, "megatron_int32_modes"),
        "int32",
        [[[5, 6, 7]], [[8], [9, 10]]],
        modes=[0, 1, 0],
    )
    with open(os.path.join(here, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
