"""The integer hashes age uses, in pure Python (no torch, no numpy), shared by the model
module, the exporter and the training script so that each is written once.

    mix64(x)                  SplitMix64 finaliser (age::detail::mix64)
    fnv1a64(text)             FNV-1a 64 of a string's UTF-8 bytes (age::detail::name_salt, and
                              age::sim::obd_feature_id for the Open Bandit Dataset's strings)
    hash_row(field, id, rows) the row of a 64-bit id in a field's table (age::hash_row)
"""

MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def hash_row(field_name: str, id_: int, rows: int) -> int:
    return mix64((id_ & MASK64) ^ fnv1a64(field_name)) % rows
