"""Convolution-first conformer context encoder without positional encoding (paper Sec. 2.3)."""
from typing import List, Optional

import torch
import torch.nn as nn
from torchaudio.models.conformer import ConformerLayer

# How compiled graphs compute the depthwise convolution: "shifted_sums" (fused by inductor) or "conv".
COMPILED_DEPTHWISE = "shifted_sums"


class MaskedConvolutionModule(nn.Module):
    """Conformer convolution module that zeroes padded steps before the depthwise convolution.

    Same layers and parameter count as torchaudio's: layer norm, pointwise conv
    to 2d, GLU, depthwise conv, batch norm, SiLU, pointwise conv, dropout.
    torchaudio's version convolves across padding, so a clip's output would
    depend on how much padding its batch has.

    All three convolutions keep ``nn.Conv1d`` weights (checkpoints are
    unchanged) but run on the (T, B, D) activations as they lie, without the
    copies a (B, D, T) layout costs. The pointwise ones are matrix products over
    the (T, B) rows: a 1x1 convolution over (B, D, T) with a T that is not a
    multiple of 8 (125 steps for a 10 s clip) runs on GEMM kernels for unaligned
    operands; a matrix product over rows does not. The depthwise one is a (k, 1)
    convolution of the channels-last image (1, D, T, B) that (T, B, D) memory
    already is, which PyTorch sends to cuDNN, where the (B, D, T) form can fall
    back to ATen's own depthwise kernels. Batch norm over the (T * B, D) rows
    takes the same statistics as over (B, D, T). Measurements:
    experiments/train_throughput.

    Inside ``torch.compile`` (the models' ``compile``) the depthwise convolution is written out as ``k``
    shifted multiply-adds over the time axis (:meth:`depthwise_shifted_sums`): inductor fuses them, with the
    masking before and the batch-norm statistics after, into one pass over the activations, and their backward
    into a few, where a convolution would stay an opaque library call with layout copies around it.
    :data:`COMPILED_DEPTHWISE` set to ``"conv"`` keeps the convolution there too (for comparisons).
    """

    def __init__(self, dim: int, kernel_size: int, dropout: float):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"depthwise kernel size must be odd, got {kernel_size}")
        self.layer_norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.batch_norm = nn.BatchNorm1d(dim)
        self.pointwise_out = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(T, B, D) -> (T, B, D); padding_mask (B, T), True at padding."""
        x = nn.functional.linear(self.layer_norm(x), self.pointwise_in.weight.squeeze(2), self.pointwise_in.bias)
        x = nn.functional.glu(x, dim=-1)
        if padding_mask is not None:
            # In place: GLU's backward reads its input, not this fresh output.
            x.masked_fill_(padding_mask.t()[:, :, None], 0.0)
        steps, batch, dim = x.shape
        x = nn.functional.silu(self.batch_norm(self.depthwise_rows(x)))
        x = nn.functional.linear(x, self.pointwise_out.weight.squeeze(2), self.pointwise_out.bias)
        return self.dropout(x.view(steps, batch, dim))

    def depthwise_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution over time of (T, B, D) activations, as (T * B, D) rows."""
        steps, batch, dim = x.shape
        # TorchScript skips this branch (it sees is_scripting() as True): it cannot read the module's global.
        if not torch.jit.is_scripting():
            if torch.compiler.is_dynamo_compiling() and COMPILED_DEPTHWISE == "shifted_sums":
                return self.depthwise_shifted_sums(x).reshape(steps * batch, dim)
        image = x[None].permute(0, 3, 1, 2)
        x = nn.functional.conv2d(
            image, self.depthwise.weight[:, :, :, None], self.depthwise.bias, padding=(self.depthwise.padding[0], 0), groups=dim
        )
        return x.permute(0, 2, 3, 1).reshape(steps * batch, dim)

    @torch.jit.unused
    def depthwise_shifted_sums(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution of (T, B, D) activations as ``k`` shifted multiply-adds: (T, B, D) -> (T, B, D)."""
        steps = x.shape[0]
        kernel = self.depthwise.kernel_size[0]
        weight = self.depthwise.weight[:, 0, :]
        padded = nn.functional.pad(x, (0, 0, 0, 0, kernel // 2, kernel // 2))
        out = padded[:steps] * weight[:, 0] + self.depthwise.bias
        for tap in range(1, kernel):
            out = out + padded[tap : tap + steps] * weight[:, tap]
        return out


class ConvFirstConformerLayer(ConformerLayer):
    """torchaudio's ``ConformerLayer`` (half FFN, conv, MHSA, half FFN, layer norm) with a padding-aware conv module."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, kernel_size: int, dropout: float):
        super().__init__(dim, ffn_dim, num_heads, kernel_size, dropout=dropout, convolution_first=True)
        self.conv_module = MaskedConvolutionModule(dim, kernel_size, dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(T, B, D) -> (T, B, D); padding_mask (B, T), True at padding."""
        # Half-step FFN residuals as one add each: scaling by 0.5 is exact, so this is x + 0.5 * ffn(x) to the bit.
        x = torch.add(x, self.ffn1(x), alpha=0.5)
        x = x + self.conv_module(x, padding_mask)
        x = x + self.self_attn_dropout(self.self_attention(self.self_attn_layer_norm(x), padding_mask))
        x = torch.add(x, self.ffn2(x), alpha=0.5)
        return self.final_layer_norm(x)

    def self_attention(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(T, B, D) -> (T, B, D): ``self_attn``'s weights and dropout, fused scaled-dot-product attention.

        What ``nn.MultiheadAttention`` computes, without its copies: it makes the
        packed q, k, v projection contiguous and takes three slices of it, whose
        backward fills three zero tensors of the projection's size and adds them.
        Here q, k and v stay strided views of the projection.
        """
        steps, batch, dim = x.shape
        heads = self.self_attn.num_heads
        packed = nn.functional.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        query, key, value = packed.reshape(steps, batch, 3, heads, dim // heads).permute(2, 1, 3, 0, 4).unbind(0)
        attend = None if padding_mask is None else ~padding_mask[:, None, None, :]
        dropout = self.self_attn.dropout if self.training else 0.0
        x = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attend, dropout_p=dropout)
        return self.self_attn.out_proj(x.permute(2, 0, 1, 3).reshape(steps, batch, dim))


class ConformerContextEncoder(nn.Module):
    """Linear in_dim -> dim, conformer layers, linear dim -> in_dim: (B, T, in_dim) -> (B, T, in_dim).

    No positional encoding: the depthwise convolutions provide position.
    ``kernel_sizes`` gives each layer's depthwise kernel (the paper: 31 then 15).
    """

    def __init__(self, in_dim: int, dim: int, ffn_dim: int, num_heads: int, kernel_sizes: List[int], dropout: float):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"encoder dim {dim} is not divisible by {num_heads} heads")
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(
            ConvFirstConformerLayer(dim, ffn_dim, num_heads, k, dropout) for k in kernel_sizes
        )
        self.proj_out = nn.Linear(dim, in_dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, project: bool = True) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, in_dim), or (B, T, dim) when ``project`` is False."""
        # Contiguous (T, B, D) from the start: a transposed view would make the first block's ops copy it, one by one.
        x = self.proj_in(x.transpose(0, 1).contiguous())
        for layer in self.layers:
            x = layer(x, padding_mask)
        if project:
            # A None check TorchScript can resolve: fine-tuned encoders drop proj_out (remove_pretraining_modules).
            if self.proj_out is None:
                raise ValueError("this encoder's projection back to the latent space was removed for fine-tuning: call it with project=False")
            x = self.proj_out(x)
        return x.transpose(0, 1)
