"""imgsync: back up the product images of a Bitrix24 catalog."""

__version__ = "0.1.0"
