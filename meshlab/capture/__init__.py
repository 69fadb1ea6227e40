"""Wire captures: the bytes that crossed a pod's network boundary, and what they reveal.

``Capture`` holds ``Flow``s (one TCP connection each) made of ``Chunk``s (bytes one way).
The analysis reads HTTP/1.x and TLS records from the raw bytes; ``to_pcap``/``from_pcap``
exchange them with Wireshark and tcpdump; ``side_by_side`` shows a before/after pair.

Modules: ``flows`` (data types), ``analysis`` (per-flow verdicts), ``tls`` and ``http``
(parsers), ``pcap`` (files), ``render`` (text and HTML), ``recording`` (``Capture``).
"""

from meshlab.capture.analysis import FlowAnalysis
from meshlab.capture.flows import Chunk, Flow
from meshlab.capture.pcap import PcapError
from meshlab.capture.recording import Capture
from meshlab.capture.render import side_by_side

__all__ = ["Capture", "Chunk", "Flow", "FlowAnalysis", "PcapError", "side_by_side"]
