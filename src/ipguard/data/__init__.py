"""Data specs (digits, npz:, cifar10:, cifar100:, imagefolder:) -> one Dataset record; the
readers."""
