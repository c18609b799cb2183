"""Side-by-side benchmark of pgpool-hook against Pgpool-II's sample hook scripts.

``python -m bench.run`` (as root, from the checkout) builds the sandbox cluster from
``sandbox/`` on its own addresses and ports, runs every hook both ways in alternating
pairs, measures the runner's own overhead, prints a table and writes a JSON file.

Modules:
    samples    copy Pgpool-II's sample scripts from the pgpool2 package and adapt them
    synthetic  generated workflows (one no-op step; N steps for the dry-run scaling test)
    stats      medians, ratios, targets, the table
    overhead   runner start-up, validate, dry-run scaling (no cluster needed)
    cluster    the per-hook and end-to-end cases on a real pgpool + PostgreSQL + sshd
    run        the command line
"""
