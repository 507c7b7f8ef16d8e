"""Reads keys back through pylibmc (libmemcached), the way a Python application would.

    /usr/bin/python3 pylibmc_read.py HOST:PORT [HOST:PORT ...] < keys

stdin: one key a line, hex-encoded (so any byte can be given). The servers are given in the
replica's order, and the client places each key on its own ketama ring (`ketama_weighted`,
libmemcached's MD5 ring, every server weight 1), so a key is read from the server pylibmc
itself picks. stdout, one line a key, in the order given:

    <key hex>\t<sha1 of the value, hex>\t<flags, unsigned 32-bit>\t<value length>
    <key hex>\tMISS

Exit 0 when every key was looked up (found or not); anything else is a failure.
"""

import hashlib
import sys

import pylibmc

BATCH = 1000


class RawClient(pylibmc.Client):
    """Hands back the stored bytes and the client flags as they are, whatever the flags say.

    (pylibmc's own deserialize would unpickle or int() a value by its flag bits. Bit 3,
    zlib, is inflated before any hook is called, so the data read here must leave it clear.)
    """

    def deserialize(self, value, flags):
        return (value, flags)


def main():
    servers = sys.argv[1:]
    if not servers:
        sys.exit("usage: pylibmc_read.py HOST:PORT [HOST:PORT ...] < hex keys")
    client = RawClient(servers, binary=False, behaviors={"ketama_weighted": True})
    keys = [bytes.fromhex(line.strip()) for line in sys.stdin if line.strip()]
    out = sys.stdout
    for start in range(0, len(keys), BATCH):
        batch = keys[start:start + BATCH]
        found = client.get_multi(batch)
        for key in batch:
            got = found.get(key)
            if got is None:
                out.write("%s\tMISS\n" % key.hex())
                continue
            if not isinstance(got, tuple):
                # pylibmc answers an empty value itself, without the hook or the flags.
                got = (got, -1)
            value, flags = got
            out.write("%s\t%s\t%d\t%d\n" % (key.hex(), hashlib.sha1(value).hexdigest(), flags & 0xFFFFFFFF if flags >= 0 else -1, len(value)))
    out.flush()


if __name__ == "__main__":
    main()
