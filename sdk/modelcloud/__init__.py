"""ModelCloud SDK: serve a Python model as a typed HTTP service.

Decorate a working predict script and run it::

    import modelcloud
    from modelcloud.data_types import image, text

    @modelcloud.setup
    def setup():
        return load_my_model()

    @modelcloud.command('classify', inputs={'photo': image()}, outputs={'label': text()})
    def classify(model, inputs):
        return {'label': model.predict(inputs['photo'])}

    if __name__ == '__main__':
        modelcloud.run()

``python cloud_model.py`` then prints ``Setting up model...`` and
``Starting model server at http://0.0.0.0:9000...``.
"""

from modelcloud import data_types, exceptions, tracking
from modelcloud._model import Model
from modelcloud._model import default_model as _default_model
from modelcloud._runner import run
from modelcloud.exceptions import InvalidInput, ModelCloudError
from modelcloud.version import __version__

setup = _default_model.setup
command = _default_model.command

__all__ = [
    "InvalidInput",
    "Model",
    "ModelCloudError",
    "__version__",
    "command",
    "data_types",
    "exceptions",
    "run",
    "setup",
    "tracking",
]
