import com.sun.tools.attach.VirtualMachine;
import javax.management.*;
import javax.management.remote.*;
import java.util.*;

public class BrokerRequests {
    public static void main(String[] args) throws Exception {
        VirtualMachine vm = VirtualMachine.attach(args[0]);
        String url = vm.startLocalManagementAgent();
        vm.detach();
        try (JMXConnector c = JMXConnectorFactory.connect(new JMXServiceURL(url))) {
            MBeanServerConnection s = c.getMBeanServerConnection();
            StringBuilder out = new StringBuilder("{");
            boolean first = true;
            for (ObjectName n : s.queryNames(new ObjectName("kafka.network:type=RequestMetrics,name=TotalTimeMs,*"), null)) {
                String req = n.getKeyProperty("request");
                long count = ((Number) s.getAttribute(n, "Count")).longValue();
                if (count == 0) continue;
                double mean = ((Number) s.getAttribute(n, "Mean")).doubleValue();
                out.append(first ? "" : ",").append('"').append(req).append("\":[").append(count).append(',').append(mean * count).append(']');
                first = false;
            }
            System.out.println(out.append('}'));
        }
    }
}
