"""The backends, one package each (``torch``, ``paddle``, ``flax``) with the same submodules:
``ops`` (the op table), ``model`` (the module tree and the contract's model functions),
``layout`` (weight names and axis orders as data), ``io`` (native files), ``train`` and
``fastpath``. What they share is written once: ``_contract`` (which submodule defines each
contract name) and ``_module_tree`` (torch's and Paddle's module tree). Registered in
``resnet_multi.registry``; the old module paths (``torch_backend`` etc.) still import."""
