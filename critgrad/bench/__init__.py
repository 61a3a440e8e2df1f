"""The benchmark harness: problems -> runner -> records on disk -> selection -> report and plots.

Commands (see ``critgrad --help``)::

    critgrad list                      # problems, their data status, optimizer names
    critgrad run mnist-mlp --optimizers adam,adam_c --seeds 0,1,2
    critgrad sweep configs/fair-mnist.toml
    critgrad report runs/fair-mnist
    critgrad main                      # the MNIST comparison, table and plots in results/main

The modules, in layers from the bottom; a module imports only from its own layer and those below
(``tests/bench/test_layers.py`` holds the table and checks every import):

* contract: ``values`` (plain-value checks, ConfigError), ``contract`` (Task, ProblemSpec,
  Setting, the data errors), ``record_format`` (RunSpec and its run id, the record's fields),
  ``finite_sum`` (a problem's objective as a sum over rows);
* optimizers: ``optimizer_labels`` (the harness's optimizer table, joined with the core's
  registry: labels, aliases, display names, default learning rates), ``saga``;
* data: ``datasets/`` (where each data set is, loaded and verified);
* problems: ``problems/`` (one builder function per problem, registered by name),
  ``dialogue_metrics``, ``catalog`` (what ``critgrad list`` shows);
* runner: ``runner`` (one spec -> one record), ``sinks`` (TensorBoard, W&B), ``data_parallel``
  (a run over the processes of torchrun);
* records: ``records`` (record files, written atomically), ``claims`` (run claims, locks);
* selection: ``protocols`` (what is tuned, on which seeds), ``scoring`` (scores, selection rules),
  ``selection`` (one problem's records -> each optimizer's configuration), ``manifest``
  (``sweep.json``: the plan and its sessions);
* report: ``report`` (analysis and tables); plots: ``plots``, ``report_files`` (the report folder);
* sweeps: ``sweep`` (the staged sweep), ``sweep_file`` (TOML/YAML files), ``preflight`` (checks
  before the first run), ``executors`` (inline, process pool, submitit), ``main_job``;
* studies: ``studies/``; and on top ``cli`` (parses and dispatches).
"""
