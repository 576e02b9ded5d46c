"""Event contracts: one definition per record, msgpack on the wire, validation, topic registry."""
