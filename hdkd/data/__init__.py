"""Dataset readers and transforms (image folders, MedMNIST .npz, the embedded digits demo data)."""
