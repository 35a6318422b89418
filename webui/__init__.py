"""The Gradio app, one job per module.

* ``validation``: pure input checks (``InputError``), limits and defaults
* ``settings``: the controls' starting values from ``engine.request``'s one resolver, and a checked
  request as the engine's ``GenerationRequest``
* ``models``: the loaded-model cache (``ModelManager``) and the data picker
* ``jobs``: the sampling job runner (worker thread, live previews, Stop)
* ``export``: run folders, PNGs with their recipe, GIFs and strips
* ``app``: ``WebApp``, the handlers shared by every tab and the page layout
* ``uploads``: uploaded files: their path, the upload folder, a PNG's recipe
* ``restore``: a result's recipe put back to work (restore from PNG, reuse seed, use as init)
* ``cascade``: the super-resolution stage (the store's upscalers, "Then upscale", ``/upscale``)
* ``live``: Live mode (a few-step student redraws as you type)
* ``gradio_cache``: gradio's file cache, written atomically
* ``tab_*``: one module per tab (generate, forward, interpolate, grid, learn, train)
* ``train_data``: the Train tab's data folders (prepare, upload, the Tiny ImageNet download)
* ``server``: the command line and start-up (``python web.py``)

No diffusion math lives here: it calls ``engine.request``, ``core.prompting``, ``engine.recipe`` and ``drawing``.
"""
