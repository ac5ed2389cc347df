#!/usr/bin/env python3
"""Where decide.lua spends Redis's time: a profile by truncation.

Runs the current src/store/redis/scripts/decide.lua (with its inserts, as
src/store/redis/mod.rs assembles it) on a throwaway-able Redis with batches
of the bench catalog's requests (4 limits and usage each), then the same
script cut short after each of its phases, and prints Redis's own time per
call (INFO commandstats) for each. The differences are the phases' costs.

    pip install redis
    redis-server --port 6399 --save "" &
    benches/script_cost.py 6399 24 24     # port, requests per call, distinct keys

It FLUSHES the Redis it is given: never point it at one that holds data.
"""
import os
import sys

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "..", "src", "store", "redis", "scripts")


def assemble(body):
    out = []
    for line in open(os.path.join(SCRIPTS, body + ".lua")).read().splitlines():
        for insert in ("clock", "calendar", "state"):
            if line.startswith("-- @" + insert):
                line = open(os.path.join(SCRIPTS, insert + ".lua")).read()
        out.append(line)
    return "\n".join(out) + "\n"


def batch(n, nkeys):
    """KEYS and ARGV of decide.lua for n bench-catalog requests over nkeys keys."""
    keys, index = [], {}

    def key(k):
        if k not in index:
            keys.append(k)
            index[k] = len(keys)
        return str(index[k])

    bucket = ("B", "1000000000000", "1000000", "0")
    argv = ["", str(n), "2", *bucket, "M", "9000000000000000", "0", "0"]
    for i in range(n):
        state = key("tg:{k:K%d}:s:unbounded" % (i % nkeys))
        stage = key("tg:{s:bench/live}:tb:/items/{id}/GET")
        argv += ["1", "TU", "4", state]
        argv += [state, "m:bench/live:/items/{id}/GET", "1", state, "b", "1", state, "q", "2", stage, "", "1"]
    return keys, argv


def main():
    port, n, nkeys = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    r = redis.Redis(port=port)
    src = assemble("decide")
    keys, argv = batch(n, nkeys)
    before_load, after_load = src.rsplit("\nload_all()\n", 1)
    variants = [
        ("an empty script, same arguments", "return 1\n"),
        ("+ the prelude (clock, calendar, state, rules)", src.split("-- Gives `cost` back")[0] + "\nreturn 1\n"),
        ("+ reading the arguments", before_load + "\nreturn 1\n"),
        ("+ reading the keys (HMGET, GET)", before_load + "\nload_all()\nreturn 1\n"),
        ("+ deciding", src.replace("\nflush()\nreturn out", "\nreturn out")),
        ("+ writing (the whole script)", src),
    ]
    print(f"{n} requests per call over {nkeys} keys: Redis time per call (per request)")
    for name, code in variants:
        r.flushall()
        sha = r.script_load(code)
        r.config_resetstat()
        for _ in range(max(100, 10000 // n)):
            r.evalsha(sha, len(keys), *keys, *argv)
        s = r.info("commandstats")["cmdstat_evalsha"]
        print(f"  {name:48} {s['usec_per_call']:8.1f} us ({s['usec_per_call'] / n:.1f})")


if __name__ == "__main__":
    main()
