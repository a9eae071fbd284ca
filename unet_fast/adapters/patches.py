"""The replacement forwards `fuse` binds on recognized modules (as Liger-Kernel binds forwards on
a built model's instances): each is the library's own forward with its transposed convolution and
torch.cat replaced by one `fused_step`, which returns None for a call it does not serve exactly;
that call then runs the library's own code (the class's forward, untouched by `fuse`).

Per-module state is plain Python data set by `fuse`: `_unet_fast_fusable`, a bool per decoder
step (False where the convolution failed `static_problem`).
"""
import torch

from unet_fast.adapters.step import fused_step


def unet_decoder_forward(self, skips):
    """dynamic_network_architectures UNetDecoder.forward (0.4.4), `transpconvs[s]` + cat fused."""
    lres_input = skips[-1]
    seg_outputs = []
    for s in range(len(self.stages)):
        x = None
        if self._unet_fast_fusable[s]:
            x = fused_step(self.transpconvs[s], lres_input, skips[-(s + 2)], skip_first=False)
        if x is None:
            x = self.transpconvs[s](lres_input)
            x = torch.cat((x, skips[-(s + 2)]), 1)
        x = self.stages[s](x)
        if self.deep_supervision:
            seg_outputs.append(self.seg_layers[s](x))
        elif s == (len(self.stages) - 1):
            seg_outputs.append(self.seg_layers[-1](x))
        lres_input = x

    seg_outputs = seg_outputs[::-1]

    if not self.deep_supervision:
        r = seg_outputs[0]
    else:
        r = seg_outputs
    return r


def monai_upcat_forward(self, x, x_e):
    """MONAI UpCat.forward (1.6.1) with upsample="deconv": cat([x_e, upsample(x)]) fused when x_e is
    exactly twice x's size (the replicate pad is then a no-op); odd sizes run UpCat's own code."""
    if x_e is not None and isinstance(x_e, torch.Tensor) and self._unet_fast_fusable[0]:
        y = fused_step(self.upsample.deconv, x, x_e, skip_first=True, containers=(self.upsample,))
        if y is not None:
            return self.convs(y)
    return type(self).forward(self, x, x_e)


def monai_up_block_forward(self, inp, skip):
    """MONAI UnetUpBlock / UnetrUpBlock.forward (1.6.1): cat((transp_conv(inp), skip)) fused."""
    if self._unet_fast_fusable[0]:
        out = fused_step(self.transp_conv.conv, inp, skip, skip_first=False, containers=(self.transp_conv,))
        if out is not None:
            return self.conv_block(out)
    return type(self).forward(self, inp, skip)


def _lesson_step(upconv, x, skip, fusable):
    y = fused_step(upconv, x, skip, skip_first=False) if fusable else None
    return y if y is not None else torch.cat([upconv(x), skip], dim=1)


def lesson_forward(self, x):
    """The lesson's U-Net forward, each upconvN + cat one fused step."""
    fusable = self._unet_fast_fusable
    x1 = self.enc1(x)
    x2 = self.enc2(self.pool(x1))
    x3 = self.enc3(self.pool(x2))
    x4 = self.enc4(self.pool(x3))
    x = _lesson_step(self.upconv3, x4, x3, fusable[0])
    x = self.dec1(x)
    x = _lesson_step(self.upconv2, x, x2, fusable[1])
    x = self.dec2(x)
    x = _lesson_step(self.upconv1, x, x1, fusable[2])
    x = self.dec3(x)
    return self.out(x)


def reference_up_step(self, upconv, x, skip):
    """unet_fast.ReferenceUNet.up_step (cat([upconv(x), skip]), ReLU when up_relu) fused."""
    y = fused_step(upconv, x, skip, skip_first=False, relu=self.up_relu)
    return y if y is not None else type(self).up_step(self, upconv, x, skip)


PATCHES = (unet_decoder_forward, monai_upcat_forward, monai_up_block_forward, lesson_forward, reference_up_step)
