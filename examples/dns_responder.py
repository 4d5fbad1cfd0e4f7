"""A DNS responder on burstio.aio with the batch protocol: every query that arrives in one
burst is answered in the same callback, and the answers leave together in one sendmmsg.
dnspython parses the queries and builds the answers (every A query gets 192.0.2.1).

Run:   python examples/dns_responder.py --port 5300
Try:   dig @127.0.0.1 -p 5300 example.com     (or dnspython: dns.query.udp(...))
Stop:  Ctrl-C.
"""
import argparse
import asyncio
import signal

import dns.exception
import dns.message
import dns.rrset

import burstio.aio


class Responder(burstio.aio.BatchDatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.answered = 0

    def datagrams_received(self, batch):           # one call per burst: a PacketBatch
        addrs = batch.addresses()
        for i in range(len(batch)):
            try:
                query = dns.message.from_wire(bytes(batch[i]))
            except dns.exception.DNSException:
                continue                           # not DNS: no answer
            answer = dns.message.make_response(query)
            for q in query.question:
                if q.rdtype == dns.rdatatype.A:
                    answer.answer.append(dns.rrset.from_text(q.name, 300, "IN", "A", "192.0.2.1"))
            self.transport.sendto(answer.to_wire(), addrs[i])  # held until the callback returns
            self.answered += 1


async def main() -> None:
    ap = argparse.ArgumentParser(description="DNS responder on burstio.aio (batch protocol)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5300, help="0: any free port")
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    transport, protocol = await burstio.aio.create_datagram_endpoint(
        loop, Responder, local_addr=(args.host, args.port))
    host, port = transport.get_extra_info("sockname")[:2]
    print(f"answering DNS on {host}:{port}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    await stop
    c = transport.get_extra_info("burst_socket").counters
    print(f"answered {protocol.answered} queries in {c['rx_syscalls']} receive calls", flush=True)
    transport.close()


if __name__ == "__main__":
    asyncio.run(main())
