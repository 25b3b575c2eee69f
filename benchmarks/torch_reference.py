"""The methods in PyTorch eager, written for the benchmarks and reference tests (NCHW, CPU).

EfficientAD: PDN teacher (frozen), PDN student with 2·C outputs, autoencoder, the four losses,
Adam with coupled weight decay; inference = teacher + student + AE, quantile normalization,
padding to S/4 and bilinear resize. STFPM: torchvision-layout ResNet teacher (eval) and student
(train-mode BN), channel-normalized feature loss over layer1..3, SGD; map = product of the
up-sampled layer maps. Written from the design notes.
"""

import torch
import torch.nn.functional as F
from torch import nn

_LAYOUT = {
    "s": [("conv", 128, 4), ("pool",), ("conv", 256, 4), ("pool",), ("conv", 256, 3), ("last", 4)],
    "m": [("conv", 256, 4), ("pool",), ("conv", 512, 4), ("pool",), ("conv", 512, 1),
          ("conv", 512, 3), ("conv_out", 4), ("last", 1)],
}


def pdn(size: str, out_channels: int) -> nn.Sequential:
    layers, channels = [], 3
    for spec in _LAYOUT[size]:
        if spec[0] == "pool":
            layers.append(nn.AvgPool2d(2, 2))
        elif spec[0] == "conv":
            layers += [nn.Conv2d(channels, spec[1], spec[2]), nn.ReLU()]
            channels = spec[1]
        elif spec[0] == "conv_out":
            layers += [nn.Conv2d(channels, out_channels, spec[1]), nn.ReLU()]
            channels = out_channels
        else:
            layers.append(nn.Conv2d(channels, out_channels, spec[1]))
    return nn.Sequential(*layers)


class AutoEncoder(nn.Module):
    def __init__(self, image_size: int, feature_size: int, out_channels: int):
        super().__init__()
        chans = [3, 32, 32, 64, 64, 64]
        self.encoder = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1) for i in range(5))
        self.bottleneck = nn.Conv2d(64, 64, min(8, image_size // 32))
        s = image_size
        self.sizes = [max(1, t) for t in (s // 64 - 1, s // 32, s // 16 - 1, s // 8, s // 4 - 1, s // 2 - 1)]
        self.decoder = nn.ModuleList(nn.Conv2d(64, 64, 4, 1, 2) for _ in self.sizes)
        self.dropout = nn.Dropout(0.2)
        self.feature_size = feature_size
        self.head1 = nn.Conv2d(64, 64, 3, 1, 1)
        self.head2 = nn.Conv2d(64, out_channels, 3, 1, 1)

    def forward(self, x):
        for conv in self.encoder:
            x = F.relu(conv(x))
        x = self.bottleneck(x)
        for size, conv in zip(self.sizes, self.decoder):
            x = F.interpolate(x, size=size, mode="bilinear")
            x = self.dropout(F.relu(conv(x)))
        x = F.interpolate(x, size=self.feature_size, mode="bilinear")
        return self.head2(F.relu(self.head1(x)))


class EfficientAD:
    def __init__(self, size: str, image_size: int, feature_size: int, channels: int = 384):
        self.c = channels
        self.teacher = pdn(size, channels).eval().requires_grad_(False)
        self.student = pdn(size, 2 * channels)
        self.autoencoder = AutoEncoder(image_size, feature_size, channels)
        params = list(self.student.parameters()) + list(self.autoencoder.parameters())
        self.optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)
        self.mean = torch.zeros(1, channels, 1, 1)
        self.std = torch.ones(1, channels, 1, 1)
        self.q = torch.tensor([0.0, 1.0, 0.0, 1.0])

    def train_step(self, image, image_aug, penalty):
        b, c = image.shape[0], self.c
        self.student.train()
        self.autoencoder.train()
        with torch.no_grad():
            t = (self.teacher(torch.cat([image, image_aug])) - self.mean) / self.std
        t_image, t_aug = t[:b], t[b:]
        s = self.student(torch.cat([image, penalty, image_aug]))
        d = (t_image - s[:b, :c]) ** 2
        threshold = torch.quantile(d.flatten()[: 2 ** 24 - 1], 0.999)  # torch's element limit
        loss_hard = d[d >= threshold].mean()
        loss_penalty = (s[b:2 * b, :c] ** 2).mean()
        ae = self.autoencoder(image_aug)
        loss = loss_hard + loss_penalty + ((t_aug - ae) ** 2).mean() + ((ae - s[2 * b:, c:]) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def anomaly_map(self, image):
        self.student.eval()
        self.autoencoder.eval()
        c = self.c
        t = (self.teacher(image) - self.mean) / self.std
        s = self.student(image)
        ae = self.autoencoder(image)
        local = ((t - s[:, :c]) ** 2).mean(1, keepdim=True)
        global_ = ((ae - s[:, c:]) ** 2).mean(1, keepdim=True)
        q = self.q
        combined = 0.5 * 0.1 * (local - q[0]) / (q[1] - q[0]) + 0.5 * 0.1 * (global_ - q[2]) / (q[3] - q[2])
        pad = (image.shape[-1] // 4 - combined.shape[-1]) // 2
        combined = F.pad(combined, (pad, pad, pad, pad))
        return F.interpolate(combined, size=image.shape[-2:], mode="bilinear")[:, 0]


def torch_resnet(arch):
    """A torchvision-layout ResNet (same state_dict names) returning {'layer1'..'layer4': NCHW}."""
    kind, depths, width = {"resnet18": ("basic", (2, 2, 2, 2), 1), "resnet34": ("basic", (3, 4, 6, 3), 1),
                           "resnet50": ("bottleneck", (3, 4, 6, 3), 1),
                           "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 2),
                           "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 2)}[arch]
    expansion = 1 if kind == "basic" else 4

    class Block(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            out = planes * expansion
            if kind == "basic":
                self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
            else:
                mid = planes * width
                self.conv1 = nn.Conv2d(inplanes, mid, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(mid)
                self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(mid)
                self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU()
            self.downsample = None
            if stride != 1 or inplanes != out:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                                nn.BatchNorm2d(out))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            if kind == "basic":
                y = self.bn2(self.conv2(y))
            else:
                y = self.relu(self.bn2(self.conv2(y)))
                y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for index, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
                blocks = []
                for block in range(depth):
                    blocks.append(Block(inplanes, planes, 2 if block == 0 and index > 0 else 1))
                    inplanes = planes * expansion
                setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(512 * expansion, 1000)  # in torchvision's files; not a tap

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            taps = {}
            for stage in ("layer1", "layer2", "layer3", "layer4"):
                x = getattr(self, stage)(x)
                taps[stage] = x
            return taps

    return Net()


class STFPM:
    def __init__(self, arch: str = "resnet18", lr: float = 0.4, momentum: float = 0.9,
                 weight_decay: float = 1e-4):
        self.teacher = torch_resnet(arch).eval().requires_grad_(False)
        self.student = torch_resnet(arch)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self.taps = ("layer1", "layer2", "layer3")
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        self.normalize = lambda x: (x - mean) / std

    def _features(self, net, image):
        # The model computes layer4 too (it is a full torchvision ResNet); skip it as kdad_jax does.
        x = net.maxpool(net.relu(net.bn1(net.conv1(self.normalize(image)))))
        out = []
        for tap in self.taps:
            x = getattr(net, tap)(x)
            out.append(x)
        return out

    def train_step(self, image):
        self.student.train()
        with torch.no_grad():
            t = self._features(self.teacher, image)
        s = self._features(self.student, image)
        # the authors' loss: Σ_c (t̂ − ŝ)² per position (no ½), mean over positions and batch
        loss = sum(((F.normalize(a, dim=1) - F.normalize(b, dim=1)) ** 2).sum(1).mean()
                   for a, b in zip(t, s))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def anomaly_map(self, image):
        self.student.eval()
        t = self._features(self.teacher, image)
        s = self._features(self.student, image)
        combined = None
        for a, b in zip(t, s):
            m = 0.5 * ((F.normalize(a, dim=1) - F.normalize(b, dim=1)) ** 2).sum(1, keepdim=True)
            m = F.interpolate(m, size=image.shape[-2:], mode="bilinear", align_corners=False)
            combined = m if combined is None else combined * m
        return combined[:, 0]
