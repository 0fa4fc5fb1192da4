"""
The command-line tools, each a module whose entry function parses ``argv`` (default
``sys.argv[1:]``): the repository's scripts (train_net.py, demo/demo.py, tools/*.py) call them,
and so do the ``maskformer-*`` commands that installing the package puts on the PATH
(maskformer_cli.py, setup.py's console_scripts).
"""
