"""The SSM signal: configuration, torch reference (``ssm``), training (``train``), weights files
(``weights``) and the compiled runtime. Only ``ssm`` and ``train`` import torch."""
