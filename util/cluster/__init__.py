"""What the cluster shell scripts do, in Python: ``python -m util.cluster <command>`` (``--help`` lists them).

``train.sh`` and ``jupyter_tunnel.sh`` only parse their arguments, source ``scripts/activate_env.sh`` and call
these commands. One job a module; nothing here imports torch except :func:`plan.make_plan` (it needs the run
folder), so the process that supervises a training stays small.

=============  ==============================================================================================
``plan``       train.sh's run plan: the run folder and the command (papermill, or srun for several tasks)
``supervise``  train.sh's job: runs the command, the one pre-emption path (time-limit warning → SIGTERM to the
               training → ``last.ckpt`` → ``scontrol requeue``), retries a notebook that never started
``procs``      processes from ``/proc``: children of a process, still running, signal several
``jupyter``    jupyter_tunnel.sh's helpers: free port, token, wait until the server answers
``__main__``   the command line
=============  ==============================================================================================
"""
