"""Network building blocks shared by more than one family: plain `nn.Module`s, no training logic."""
