"""resnet-repro: reproduce He et al. 2015 (Table 6, CIFAR-10) and explain the gaps of failed reproductions."""
