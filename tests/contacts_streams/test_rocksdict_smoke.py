"""rocksdict as the store uses it: column families written in one batch survive a reopen."""

from rocksdict import Options, Rdict, WriteBatch


def open_store(path):
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    column_families = {name: Options(raw_mode=True) for name in ("contacts", "offsets")}
    return Rdict(str(path), options=options, column_families=column_families)


def test_one_batch_over_column_families_survives_reopen(tmp_path):
    db = open_store(tmp_path)
    contacts, offsets = db.get_column_family("contacts"), db.get_column_family("offsets")
    batch = WriteBatch(raw_mode=True)
    batch.put(b"id-1", b"\xc3\x01contact", db.get_column_family_handle("contacts"))
    batch.put(b"partition-0", (42).to_bytes(8, "big"), db.get_column_family_handle("offsets"))
    db.write(batch)
    del contacts, offsets  # every column-family handle must go before close, or reopen hits the lock
    db.close()

    db = open_store(tmp_path)
    contacts, offsets = db.get_column_family("contacts"), db.get_column_family("offsets")
    assert contacts[b"id-1"] == b"\xc3\x01contact"
    assert int.from_bytes(offsets[b"partition-0"], "big") == 42
    assert b"id-1" not in db  # the default family holds nothing: the batch went where it was told
    del contacts, offsets
    db.close()
