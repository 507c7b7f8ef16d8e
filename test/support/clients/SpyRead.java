import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import net.spy.memcached.AddrUtil;
import net.spy.memcached.CachedData;
import net.spy.memcached.FailureMode;
import net.spy.memcached.KetamaConnectionFactory;
import net.spy.memcached.MemcachedClient;
import net.spy.memcached.transcoders.Transcoder;

/**
 * Reads keys back through spymemcached with its KetamaConnectionFactory, the way a Java
 * application would.
 *
 *     java -cp spymemcached.jar:DIR SpyRead "HOST:PORT HOST:PORT ..." < keys
 *
 * stdin: one key a line, hex-encoded (the bytes are the key's UTF-8: spymemcached keys are
 * Strings). The client places each key on its own ketama ring (KETAMA_HASH, node names as
 * Java prints the socket address), so a key is read from the server spymemcached picks.
 * Reading starts once every server is connected, and a read is never sent to another server
 * than the ring's (failure mode Retry, not the factory's Redistribute, which would send the
 * reads of a node still connecting to the next node on the ring and report misses).
 * stdout, one line a key, in the order given:
 *
 *     <key hex>\t<sha1 of the value, hex>\t<flags, unsigned 32-bit>\t<value length>
 *     <key hex>\tMISS
 *
 * Exit 0 when every key was looked up (found or not); anything else is a failure.
 */
public final class SpyRead {
  private static final int BATCH = 1000;

  /** The stored bytes and the client flags as they are: no deserializing, no decompressing. */
  private static final class Raw implements Transcoder<CachedData> {
    public boolean asyncDecode(CachedData data) {
      return false;
    }

    public CachedData encode(CachedData data) {
      return data;
    }

    public CachedData decode(CachedData data) {
      return data;
    }

    public int getMaxSize() {
      return CachedData.MAX_SIZE;
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: SpyRead \"HOST:PORT HOST:PORT ...\" < hex keys");
      System.exit(2);
    }
    HexFormat hex = HexFormat.of();
    List<String> keys = new ArrayList<>();
    try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII))) {
      for (String line = in.readLine(); line != null; line = in.readLine()) {
        if (!line.isBlank()) keys.add(new String(hex.parseHex(line.strip()), StandardCharsets.UTF_8));
      }
    }
    List<java.net.InetSocketAddress> servers = AddrUtil.getAddresses(args[0]);
    KetamaConnectionFactory ketama = new KetamaConnectionFactory() {
      @Override
      public FailureMode getFailureMode() {
        return FailureMode.Retry;
      }
    };
    MemcachedClient client = new MemcachedClient(ketama, servers);
    Raw raw = new Raw();
    StringBuilder out = new StringBuilder();
    try {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
      while (client.getAvailableServers().size() < servers.size()) {
        if (System.nanoTime() > deadline) {
          System.err.println("SpyRead: connected to " + client.getAvailableServers() + " of " + servers + " after 30 s");
          System.exit(3);
        }
        Thread.sleep(20);
      }
      for (int start = 0; start < keys.size(); start += BATCH) {
        List<String> batch = keys.subList(start, Math.min(keys.size(), start + BATCH));
        Map<String, CachedData> found = client.asyncGetBulk(batch, raw).get(60, TimeUnit.SECONDS);
        for (String key : batch) {
          String keyHex = hex.formatHex(key.getBytes(StandardCharsets.UTF_8));
          CachedData data = found.get(key);
          if (data == null) {
            out.append(keyHex).append("\tMISS\n");
            continue;
          }
          byte[] value = data.getData();
          String sha1 = hex.formatHex(MessageDigest.getInstance("SHA-1").digest(value));
          out.append(keyHex).append('\t').append(sha1).append('\t')
              .append(Integer.toUnsignedString(data.getFlags())).append('\t').append(value.length).append('\n');
        }
      }
    } finally {
      client.shutdown(10, TimeUnit.SECONDS);
    }
    System.out.print(out);
    System.out.flush();
  }
}
