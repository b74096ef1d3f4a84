"""Public channel types (the official ``iii.channel``)."""

from iii.channels import Channel, ChannelReader, ChannelWriter, StreamChannelRef

__all__ = ["Channel", "ChannelReader", "ChannelWriter", "StreamChannelRef"]
