"""The benchmark harness: problems -> runner -> records on disk -> report and plots.

Commands (see ``critgrad --help``)::

    critgrad list                      # problems, their data status, optimizer names
    critgrad run mnist-mlp --optimizers adam,adam_c --seeds 0,1,2
    critgrad sweep configs/fair-mnist.toml
    critgrad report runs/fair-mnist
    critgrad main                      # the MNIST comparison, table and plots in results/main

Each part is a module: ``problems`` (registry), ``runner`` (one run -> one record), ``records``
(atomic JSON files), ``protocols`` (what is tuned, how a configuration is selected), ``sweep``
(plans and executes runs, resumable), ``report`` and ``plots``.
"""
