"""EfficientAD in PyTorch eager, written for the benchmarks only (NCHW, CPU).

Same computation as kdad_jax's EfficientAD: PDN teacher (frozen), PDN student with 2·C outputs,
autoencoder, the four losses, Adam with coupled weight decay; inference = teacher + student + AE,
quantile normalization, padding to S/4 and bilinear resize. Written from the design notes.
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
