"""Public channel types (the official ``iii.channel``)."""

from iii.channels import Channel, ChannelReader, ChannelWriter
from iii.iii_types import StreamChannelRef

__all__ = ["Channel", "ChannelReader", "ChannelWriter", "StreamChannelRef"]
