"""An independent re-statement of docs/model.md with the ORIGINAL code's module tree (nn.Sequential
indices, PreNorm, to_patch_embedding, ...), so its state_dict has the original checkpoint layout.
Used only by tests: a model built here and its hdkd twin loaded through the converter must agree.
Written from the text of docs/model.md with plain nn layers and an explicit softmax attention,
deliberately unlike hdkd's implementation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def stem(inp, oup, downsample):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 2 if downsample else 1, 1, bias=False),
                         nn.BatchNorm2d(oup), nn.GELU())


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class ChannelAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        r = max(c // 16, 1)
        self.fc = nn.Sequential(nn.Conv2d(c, r, 1, bias=False), nn.GELU(),
                                nn.Conv2d(r, c, 1, bias=False))

    def forward(self, x):
        a = self.fc(F.adaptive_avg_pool2d(x, 1))
        m = self.fc(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(a + m)


class SpatialAttn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        s = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
        return torch.sigmoid(self.conv1(s))


class Cbam(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.spatial_attention = SpatialAttn()
        self.channel_attention = ChannelAttn(c)

    def forward(self, x):
        u = self.channel_attention(x) * x
        return self.spatial_attention(u) * u + x


class Mbcsa(nn.Module):
    def __init__(self, inp, oup, downsample=False, expansion=4):
        super().__init__()
        self.downsample = downsample
        hidden = inp * expansion
        s = 2 if downsample else 1
        if downsample:
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.proj = nn.Conv2d(inp, oup, 1, bias=False)
        if expansion == 1:
            body = nn.Sequential(nn.Conv2d(inp, inp, 3, s, 1, groups=inp, bias=False),
                                 nn.BatchNorm2d(inp), nn.GELU(), nn.Conv2d(inp, oup, 1, bias=False),
                                 nn.BatchNorm2d(oup))
        else:
            body = nn.Sequential(
                nn.Conv2d(inp, hidden, 1, s, bias=False), nn.BatchNorm2d(hidden), nn.GELU(),
                nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden), nn.GELU(), Cbam(hidden),
                nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))
        self.conv = PreNorm(inp, body)

    def forward(self, x):
        short = self.proj(self.pool(x)) if self.downsample else x
        return short + self.conv(x)


def stage(block, inp, oup, depth):
    return nn.Sequential(*[block(inp if j == 0 else oup, oup, j == 0) for j in range(depth)])


class OriginalTeacher(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stage1 = stage(stem, 3, 64, 6)
        self.stage2 = stage(Mbcsa, 64, 96, 6)
        self.stage3 = stage(Mbcsa, 96, 192, 9)
        self.fn1 = nn.Linear(192, 128)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.classifier(self.fn1(x.mean((2, 3))))


class Patches(nn.Module):
    def forward(self, x):  # token (i, j) = concat over (p1, p2) of the channel vector
        h, w = x.shape[2] // 2, x.shape[3] // 2
        return torch.stack([torch.cat([x[:, :, 2 * i + p1, 2 * j + p2] for p1 in range(2)
                                       for p2 in range(2)], 1)
                            for i in range(h) for j in range(w)], 1)


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(256)
        self.to_qkv = nn.Linear(256, 768, bias=False)
        self.to_out = nn.Sequential(nn.Linear(256, 256), nn.Dropout(0.0))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, -1)
        q, k, v = (t.reshape(b, n, 8, 32).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, -1)
        return self.to_out((a @ v).transpose(1, 2).reshape(b, n, 256))


class FF(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(1024, 256), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(256)
        self.layers = nn.ModuleList([nn.ModuleList([Attn(), FF()]) for _ in range(3)])

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class Dflt(nn.Module):
    def __init__(self, tokens, distill):
        super().__init__()
        self.distill = distill
        self.to_patch_embedding = nn.Sequential(Patches(), nn.LayerNorm(768), nn.Linear(768, 256),
                                                nn.LayerNorm(256))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens + 1 + int(distill), 256))
        self.cls_token = nn.Parameter(torch.randn(1, 1, 256))
        if distill:
            self.distill_token = nn.Parameter(torch.randn(1, 1, 256))
        self.transformer = Transformer()

    def forward(self, f):
        x = self.to_patch_embedding(f)
        lead = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.distill:
            lead.append(self.distill_token.expand(x.shape[0], -1, -1))
        x = self.transformer(torch.cat(lead + [x], 1) + self.pos_embedding)
        return x[:, 0], x[:, 1]


class OriginalStudent(nn.Module):
    def __init__(self, num_classes, img_size, distill):
        super().__init__()
        self.distill = distill
        self.stage1 = stage(stem, 3, 64, 2)
        self.stage2 = stage(Mbcsa, 64, 96, 2)
        self.stage3 = stage(Mbcsa, 96, 192, 3)
        self.DFLT_module = Dflt((img_size // 16) ** 2, distill)
        self.head_cls = nn.Linear(256, num_classes)
        if distill:
            self.head_distill = nn.Linear(256, num_classes)

    def forward(self, x):
        c, d = self.DFLT_module(self.stage3(self.stage2(self.stage1(x))))
        if self.distill:
            return self.head_cls(c), self.head_distill(d)
        return self.head_cls(c)


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine and running statistics, so a mis-mapped BN cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(0, 100, (1,), generator=g)))
