"""Analysis studies: ``critgrad study NAME`` runs one, resumably, into a folder of its own.

A *study* (:class:`~critgrad.bench.studies.contract.Study`) is a set of independent units of work,
each described by a JSON-able configuration with a stable id, a function that runs one unit, a
summary of the finished units (a Markdown table and JSON) and figures. The runner
(:mod:`~critgrad.bench.studies.runner`) writes each unit's result atomically to
``DIR/units/<id>.json`` as soon as it finishes, so a killed study resumes where it stopped and
never reruns a finished unit; then it writes ``DIR/summary.json``, ``DIR/table.md`` and the
figures ``DIR/*.png``.

Adding a study: one new module here that defines ``def NAME() -> Study`` decorated with
:func:`~critgrad.bench.studies.contract.register`, and its import in
:mod:`~critgrad.bench.studies.catalog`.
"""
