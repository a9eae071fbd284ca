"""The segmentation workflow behind `unet-fast train | predict | export | demo`.

- data.py          built-in synthetic data, image folders, reading images and masks
- train.py         `unet-fast train` and `fit(TrainOptions)`: the loop, resume, metrics
- predict.py       `unet-fast predict` and `unet_fast.predict`: whole images or tiles
- checkpoint.py    what a checkpoint holds, writing it and loading it back (`unet_fast.load`)
- export.py        `unet-fast export`: ONNX through the reference model
- demo.py          `unet-fast demo`: train, evaluate and segment on built-in data
- distributed.py   devices and DistributedDataParallel
- metrics.py       loss, Dice and IoU
- overlay.py, plots.py   the PNG outputs
- atomic_write.py  every file written to a temporary and renamed, so none is half-written; a FIFO
                   or character device written through, never replaced
- progress.py      progress bars on a terminal, plain occasional lines elsewhere
"""
