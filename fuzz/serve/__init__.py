"""`procfuzz serve`: the fuzzing service.  A manager (manager.py) runs campaigns on a kernel
matrix without pause, imports their findings into a bug database (db.py, records.py,
importer.py), follows each new bug up (followups.py) and serves a JSON API and HTML pages
(http.py, pages.py, charts.py).  The top stage of the pipeline, beside the command line."""
