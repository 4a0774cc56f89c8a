"""What crosses stages, and the files a run leaves: formats and names, no policy.

The point type and its line-protocol writer (:mod:`.point`) and reader (:mod:`.lineproto`);
every measurement, field and tag a run writes (:mod:`.schema`); the journal
(:mod:`.journal`); the run directory and its files (:mod:`.rundir`); per-connection logs with
a cap on disk (:mod:`.logcap`).
"""

__all__ = ["journal", "lineproto", "logcap", "point", "rundir", "schema"]
