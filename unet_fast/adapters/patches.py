"""The replacement methods `fuse` gives recognized modules (through the generated subclasses of
fused_classes.py): each is the library's own method with its transposed convolution and torch.cat
replaced by one `fused_step`, which returns None for a call it does not serve exactly; that call
then runs the library's own code (`library`, the library class's method, passed in first).

Per-module state is plain Python data set by `fuse`: `_unet_fast_steps`, one step.Step per decoder
step. Each replacement looks its modules up at every call, so what `fused_step` checks is what the
library's code would call now.
"""
import torch

from unet_fast.adapters.step import child, fused_step


def unet_decoder_forward(library, self, skips):
    """dynamic_network_architectures UNetDecoder.forward (0.4.4), `transpconvs[s]` + cat fused."""
    lres_input = skips[-1]
    seg_outputs = []
    for s in range(len(self.stages)):
        x = fused_step(self, s, self.transpconvs[s], lres_input, skips[-(s + 2)], skip_first=False)
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


def monai_upcat_forward(library, self, x, x_e):
    """MONAI UpCat.forward (1.6.1) with upsample="deconv": cat([x_e, upsample(x)]) fused when x_e is
    exactly twice x's size (the replicate pad is then a no-op); odd sizes run UpCat's own code."""
    if x_e is not None and isinstance(x_e, torch.Tensor):
        upsample = self.upsample
        y = fused_step(self, 0, child(upsample, "deconv"), x, x_e, skip_first=True, wrappers=(upsample,))
        if y is not None:
            return self.convs(y)
    return library(self, x, x_e)


def monai_up_block_forward(library, self, inp, skip):
    """MONAI UnetUpBlock / UnetrUpBlock.forward (1.6.1): cat((transp_conv(inp), skip)) fused."""
    transp_conv = self.transp_conv
    out = fused_step(self, 0, child(transp_conv, "conv"), inp, skip, skip_first=False, wrappers=(transp_conv,))
    if out is not None:
        return self.conv_block(out)
    return library(self, inp, skip)


def _lesson_step(model, s, upconv, x, skip):
    y = fused_step(model, s, upconv, x, skip, skip_first=False)
    return y if y is not None else torch.cat([upconv(x), skip], dim=1)


def lesson_forward(library, self, x):
    """The lesson's U-Net forward, each upconvN + cat one fused step."""
    x1 = self.enc1(x)
    x2 = self.enc2(self.pool(x1))
    x3 = self.enc3(self.pool(x2))
    x4 = self.enc4(self.pool(x3))
    x = _lesson_step(self, 0, self.upconv3, x4, x3)
    x = self.dec1(x)
    x = _lesson_step(self, 1, self.upconv2, x, x2)
    x = self.dec2(x)
    x = _lesson_step(self, 2, self.upconv1, x, x1)
    x = self.dec3(x)
    return self.out(x)


def reference_up_step(library, self, upconv, x, skip):
    """unet_fast.ReferenceUNet.up_step (cat([upconv(x), skip]), ReLU when up_relu) fused; the step is
    the one whose module `upconv` is (a call with any other module runs ReferenceUNet's code)."""
    for s, step in enumerate(self._unet_fast_steps):
        if self._modules.get(step.name) is upconv:
            y = fused_step(self, s, upconv, x, skip, skip_first=False, relu=self.up_relu)
            return y if y is not None else library(self, upconv, x, skip)
    return library(self, upconv, x, skip)

