package local.carteligibility.hapi;

import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.entity.StorageSettings;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.HardcodedServerAddressStrategy;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.util.Map;
import java.util.Properties;
import javax.sql.DataSource;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.boot.context.properties.bind.Bindable;
import org.springframework.boot.context.properties.bind.Binder;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.core.env.Environment;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;

/** The beans HAPI expects the hosting application to define. */
@Configuration
@EnableConfigurationProperties(HapiProperties.class)
public class JpaServerConfig {

	@Bean
	public JpaStorageSettings storageSettings(HapiProperties props) {
		JpaStorageSettings s = new JpaStorageSettings();
		s.setAllowExternalReferences(props.isAllowExternalReferences());
		s.setAllowMultipleDelete(props.isAllowMultipleDelete());
		s.setExpungeEnabled(props.isExpungeEnabled());
		s.setDeleteExpungeEnabled(props.isDeleteExpungeEnabled());
		s.setEnforceReferentialIntegrityOnWrite(props.isEnforceReferentialIntegrityOnWrite());
		s.setAutoCreatePlaceholderReferenceTargets(props.isAutoCreatePlaceholderReferenceTargets());
		s.setFetchSizeDefaultMaximum(props.getMaxPageSize());
		s.setReuseCachedSearchResultsForMillis(props.getReuseCachedSearchResultsMillis());
		s.setExpireSearchResultsAfterMillis(props.getRetainCachedSearchesMins() * 60_000L);
		s.setSearchPreFetchThresholds(props.getSearchPrefetchThresholds());
		s.setSchedulingDisabled(!props.isDaoSchedulingEnabled());
		s.setIndexMissingFields(StorageSettings.IndexEnabledEnum.DISABLED);
		// Client-assigned ids such as "Patient/demo-001" (PUT Type/id) must be accepted.
		s.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ALPHANUMERIC);
		// Bulk Data $export runs as a batch2 job; fast tracking finishes small exports in seconds
		// instead of waiting for the next maintenance pass, and each kick-off starts a fresh job.
		s.setEnableTaskBulkExportJobExecution(props.isBulkExportEnabled());
		s.setJobFastTrackingEnabled(true);
		s.setEnableBulkExportJobReuse(false);
		return s;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings(HapiProperties props) {
		SubscriptionSettings s = new SubscriptionSettings();
		HapiProperties.Subscription sub = props.getSubscription();
		if (sub.isResthookEnabled()) {
			// As the JPA starter does for hapi.fhir.subscription.resthook_enabled.
			s.addSupportedSubscriptionType(
					org.hl7.fhir.dstu2.model.Subscription.SubscriptionChannelType.RESTHOOK);
		}
		// Our receiver listens on 127.0.0.1 in tests: any http(s) endpoint is allowed.
		s.setRestHookEndpointUrlValidationRegex("^https?://.+$");
		s.setSubscriptionIntervalInMs(sub.getPollingIntervalMs());
		s.setSubscriptionChangeQueuedImmediately(sub.isImmediatelyQueued());
		return s;
	}

	/** Delivery needs an e-mail sender bean even with only rest-hook enabled: one that refuses. */
	@Bean
	public IEmailSender emailSender() {
		return details -> {
			throw new UnsupportedOperationException("email subscriptions are not enabled");
		};
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			DataSource dataSource,
			ConfigurableListableBeanFactory beanFactory,
			FhirContext fhirContext,
			JpaStorageSettings storageSettings,
			Environment env) {
		LocalContainerEntityManagerFactoryBean emf =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, fhirContext, storageSettings);
		emf.setPersistenceUnitName("HAPI_PU");
		emf.setDataSource(dataSource);
		Properties jpa = new Properties();
		Map<String, String> fromYaml = Binder.get(env)
				.bind("spring.jpa.properties", Bindable.mapOf(String.class, String.class))
				.orElse(Map.of());
		jpa.putAll(fromYaml);
		emf.setJpaProperties(jpa);
		return emf;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory entityManagerFactory) {
		return new JpaTransactionManager(entityManagerFactory);
	}

	@Bean
	public RestfulServer restfulServer(
			FhirContext fhirContext,
			HapiProperties props,
			ResourceProviderFactory resourceProviders,
			JpaSystemProvider<?, ?> systemProvider,
			IFhirSystemDao<?, ?> systemDao,
			JpaStorageSettings storageSettings,
			ISearchParamRegistry searchParamRegistry,
			IValidationSupport validationSupport,
			DatabaseBackedPagingProvider pagingProvider,
			BulkDataExportProvider bulkDataExportProvider) {
		RestfulServer server = new RestfulServer(fhirContext);
		server.registerProviders(resourceProviders.createProviders());
		server.registerProvider(systemProvider);
		if (props.isBulkExportEnabled()) {
			server.registerProvider(bulkDataExportProvider);
		}
		server.setServerConformanceProvider(new JpaCapabilityStatementProvider(
				server, systemDao, storageSettings, searchParamRegistry, validationSupport));
		pagingProvider.setDefaultPageSize(props.getDefaultPageSize());
		pagingProvider.setMaximumPageSize(props.getMaxPageSize());
		server.setPagingProvider(pagingProvider);
		server.setDefaultResponseEncoding(EncodingEnum.JSON);
		server.setDefaultPrettyPrint(props.isPrettyPrint());
		if (props.getServerAddress() == null || props.getServerAddress().isBlank()) {
			server.setServerAddressStrategy(new IncomingRequestAddressStrategy());
		} else {
			server.setServerAddressStrategy(new HardcodedServerAddressStrategy(props.getServerAddress()));
		}
		return server;
	}

	@Bean
	public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
		ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(server, "/fhir/*");
		reg.setName("fhir");
		reg.setLoadOnStartup(1);
		return reg;
	}
}
