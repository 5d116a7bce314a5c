"""DeiT-tiny-style vision transformers sized for small images (timm's VisionTransformer)."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer


def vit_cifar(num_classes: int = 10, in_channels: int = 3, img_size: int = 32, patch_size: int = 4,
              embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
              fused_attn: bool = True, **kwargs) -> VisionTransformer:
    """DeiT-tiny's widths (192 wide, 3 heads of 64, 12 blocks) on 32x32 images in 4x4 patches."""
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_channels,
                              num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                              num_heads=num_heads, mlp_ratio=mlp_ratio, **kwargs)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused_attn
    return model


def vit_tiny_cifar(num_classes: int = 10, in_channels: int = 3) -> VisionTransformer:
    """DeiT-tiny's widths in 6 blocks on 32x32 images cut into 16 patches of 8x8 (17 tokens with
    the class token): 46.6 M MACs, about 2.7 M parameters, so that it trains on a 2-core CPU."""
    return vit_cifar(num_classes, in_channels, patch_size=8, depth=6)


def vit_micro(num_classes: int = 10, in_channels: int = 3) -> VisionTransformer:
    """A two-block ViT with four heads of 12 channels on 32x32 images: for tests."""
    return vit_cifar(num_classes, in_channels, patch_size=8, embed_dim=48, depth=2, num_heads=4,
                     mlp_ratio=2.0)


def vit_micro_unfused(num_classes: int = 10, in_channels: int = 3) -> VisionTransformer:
    """`vit_micro` computing attention with explicit products instead of the fused kernel."""
    return vit_cifar(num_classes, in_channels, patch_size=8, embed_dim=48, depth=2, num_heads=4,
                     mlp_ratio=2.0, fused_attn=False, qkv_bias=True, qk_norm=True)
